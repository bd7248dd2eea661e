"""The end of a run: a per-stage table on stdout (stage, type, what happened, eval accuracy,
wall time) and the HTML report, which must never cost a finished run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from posttrain.pipeline.record import DONE, RECORD
from posttrain.recipe.schema import Recipe

log = logging.getLogger("posttrain")


def stage_rows(recipe: Recipe, run_dir: Path, steps, outcomes: dict[str, str]) -> list[dict]:
    """One row per stage: ``stage``, ``type``, ``outcome`` (ran / resumed / reused),
    ``accuracy`` (the recipe's eval on a policy stage, else None) and ``seconds`` (the
    stage's own wall time, eval included, from when it ran)."""
    rows = []
    for step in steps:
        d = run_dir / step.name
        accuracy = None
        if step.spec.trains_policy and recipe.eval is not None:
            accuracy = headline_accuracy(_read(d / "eval.json"))
        seconds = _read(d / RECORD).get("seconds", _read(d / DONE).get("seconds"))
        rows.append({"stage": step.name, "type": step.spec.name, "outcome": outcomes.get(step.name, "-"),
                     "accuracy": accuracy, "seconds": seconds})
    return rows


def format_summary(rows: list[dict]) -> str:
    header = ["stage", "type", "outcome", "eval accuracy", "wall time"]
    table = [header] + [[r["stage"], r["type"], r["outcome"],
                         "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}", duration(r["seconds"])]
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def print_summary(recipe: Recipe, run_dir: Path, steps, outcomes: dict[str, str]) -> None:
    print(format_summary(stage_rows(recipe, run_dir, steps, outcomes)), flush=True)


def duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_run_report(run_dir: Path) -> Path | None:
    """``posttrain.report.write_report(run_dir)``, or None with a warning if it fails: the
    run's results are already on disk and a report problem must not turn it into a failure."""
    try:
        from posttrain.report import write_report
    except ModuleNotFoundError as e:
        if e.name == "posttrain.report":  # a tree without the report module
            return None
        log.warning("run report not written: %s", e)
        return None
    except Exception as e:  # noqa: BLE001 (an optional dependency failing to import, ...)
        log.warning("run report not written: %s: %s", type(e).__name__, e)
        return None
    try:
        return Path(write_report(run_dir))
    except Exception as e:  # noqa: BLE001
        log.warning("run report not written: %s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None


def headline_accuracy(ev: dict) -> float | None:
    """``accuracy`` of an eval.json, or the mean over its ``suites`` when it has several."""
    acc = ev.get("accuracy")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool):
        return float(acc)
    suites = ev.get("suites") if isinstance(ev.get("suites"), dict) else {}
    accs = [s["accuracy"] for s in suites.values() if isinstance(s, dict) and isinstance(s.get("accuracy"), (int, float))]
    return sum(accs) / len(accs) if accs else None


def _read(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
