"""``posttrain report RUN_DIR``: one self-contained HTML page for a run — per stage, its
metric curves (plotly, with plotly.js inlined, so the page opens with no network) and a
table of eval results and wall times.

``write_report(run_dir, out=None)`` is what ``posttrain run`` calls at the end."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from posttrain.jsonl import write_text_atomic
from posttrain.report_data import Panel, Stage, flatten, headline_accuracy, read_run

REPORT_NAME = "report.html"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1400px; padding: 0 16px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin-top: 4px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child, table.summary td:nth-child(-n+3) { text-align: left; }
th { background: #f5f5f5; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
figure.panel { margin: 0; border: 1px solid #eee; border-radius: 4px; }
figcaption { font-weight: 600; padding: 8px 12px 0; }
.status-done { color: #1a7f37; } .status-unfinished { color: #b35900; } .status-not { color: #888; }
pre { background: #f7f7f7; padding: 12px; overflow-x: auto; }
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    text = str(v) if not isinstance(v, (list, dict)) else json.dumps(v)
    return text if len(text) <= 160 else text[:157] + "..."


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure_html(fig, div_id: str, stage: str, title: str) -> str:
    inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height="320px",
                        default_width="100%", config=_PLOT_CONFIG)
    return (f'<figure class="panel" data-stage="{html.escape(stage)}" data-panel="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption>{inner}</figure>")


def panel_figure(panel: Panel):
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, (steps, values) in panel.series.items():
        mode = "lines+markers" if len(steps) <= 60 else "lines"
        fig.add_trace(go.Scatter(x=steps, y=values, mode=mode, name=key, connectgaps=False))
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=20, b=45),
                      legend=dict(orientation="h", y=-0.2),
                      showlegend=len(panel.series) > 1 or panel.title != next(iter(panel.series)))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=panel.y_title, exponentformat="e" if panel.title == "Learning rate" else "B")
    return fig


def summary_figure(stages: list[Stage]):
    """Eval accuracy after each stage, in run order (the number the recipe should raise)."""
    import plotly.graph_objects as go

    points = [(s.name, headline_accuracy(s.eval)) for s in stages]
    points = [(n, a) for n, a in points if a is not None]
    if not points:
        return None
    fig = go.Figure(go.Bar(x=[n for n, _ in points], y=[a for _, a in points],
                           text=[f"{a:.1%}" for _, a in points], textposition="outside"))
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=20, b=45),
                      yaxis=dict(range=[0, 1.1], tickformat=".0%", title_text="accuracy"))
    return fig


def _summary_table(stages: list[Stage]) -> str:
    rows = []
    for s in stages:
        acc = headline_accuracy(s.eval)
        n = s.eval.get("n") if s.eval else None
        status = f'<span class="status-{s.status.split()[0]}">{html.escape(s.status)}</span>'
        rows.append([html.escape(s.name), html.escape(_fmt(s.type)), status, _duration(s.seconds),
                     _fmt(s.last_step), "–" if acc is None else f"{acc:.2%}", _fmt(n)])
    timed = [s.seconds for s in stages if s.seconds is not None]
    if len(timed) > 1:
        rows.append(["<b>total</b>", "", "", _duration(sum(timed)), "", "", ""])
    return _table(["stage", "type", "status", "wall time", "last step", "eval accuracy", "eval rows"], rows,
                  "summary")


def _eval_details(stages: list[Stage]) -> str:
    """Every eval result (``per_verifier``, suites, ...) as rows, one column per stage."""
    flat = {s.name: flatten(s.eval) for s in stages if s.eval}
    if not flat:
        return ""
    keys: list[str] = []
    for d in flat.values():
        keys += [k for k in d if k not in keys]
    rows = [[html.escape(k)] + [html.escape(_fmt(flat[n].get(k))) for n in flat] for k in keys]
    return "<h3>Eval results</h3>" + _table(["result"] + [html.escape(n) for n in flat], rows, "eval")


def render(run_dir: Path, stages: list[Stage]) -> str:
    from plotly.offline import get_plotlyjs

    import posttrain

    parts: list[str] = []
    n_plot = 0

    def plot(fig, stage: str, title: str) -> str:
        nonlocal n_plot
        n_plot += 1
        return _figure_html(fig, f"plot-{n_plot}", stage, title)

    parts.append("<h2>Summary</h2>" + _summary_table(stages))
    summary = summary_figure(stages)
    if summary is not None:
        parts.append(f'<div class="grid">{plot(summary, "", "Eval accuracy after each stage")}</div>')
    parts.append(_eval_details(stages))
    for s in stages:
        parts.append(f'<h2 id="stage-{html.escape(s.name)}">{html.escape(s.name)}</h2>')
        facts = [f"type: {s.type or '–'}", f"status: {s.status}", f"wall time: {_duration(s.seconds)}"]
        if s.last_step is not None:
            facts.append(f"last step: {s.last_step}")
        parts.append(f'<p class="meta">{html.escape(" · ".join(facts))}</p>')
        if s.panels:
            parts.append('<div class="grid">' + "".join(plot(panel_figure(p), s.name, p.title) for p in s.panels)
                         + "</div>")
        elif s.status != "not started":
            parts.append("<p>No metrics logged.</p>")
        if s.once:
            rows = [[html.escape(k), html.escape(_fmt(v))] for k, v in sorted(s.once.items())]
            parts.append("<h3>Logged once</h3>" + _table(["metric", "value"], rows, "once"))
    recipe = run_dir / "recipe.yaml"
    if recipe.is_file():
        parts.append("<h2>Recipe</h2><details><summary>recipe.yaml</summary><pre>"
                     f"{html.escape(recipe.read_text())}</pre></details>")
    # plotly.js inlined: the page needs no network. A "</script" inside would end the
    # element early; plotly.js has none, but escape it to be safe.
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"posttrain run report: {run_dir.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            f'<meta name="posttrain-plots" content="{n_plot}">'
            f"<style>{_CSS}</style>"
            f'<script type="text/javascript">{plotly_js}</script>'
            f"</head><body><h1>{html.escape(title)}</h1>"
            f'<p class="meta">{html.escape(str(run_dir.resolve()))} · written {html.escape(when)} · '
            f"posttrain {html.escape(getattr(posttrain, '__version__', ''))}</p>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``run_dir/report.html``),
    atomically; return its path. Raises ``ReportError`` for a folder that is not a run."""
    run_dir = Path(run_dir)
    stages = read_run(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    page = render(run_dir, stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return out


def _cmd_report(args) -> int:
    out = write_report(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"report written to {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a run's HTML report (plots per stage, eval results, wall times)")
    p.add_argument("run_dir", help="a run directory (the recipe's output_dir)")
    p.add_argument("-o", "--output", help=f"HTML file to write (default RUN_DIR/{REPORT_NAME})")
    p.set_defaults(func=_cmd_report)
