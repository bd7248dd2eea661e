"""What a run report shows, read from a run directory: the stages in recipe order, each
stage's metric curves grouped into panels, its eval results and wall time.

Known metric names get their own panels (loss, reward, KL, accuracy, response length,
learning rate, ...); every other numeric metric logged at two or more steps gets a panel of
its own, and metrics logged once (data statistics) go to a table."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from posttrain.errors import PosttrainError
from posttrain.metrics import read_metrics

DONE = "DONE"  # the pipeline's marker of a finished stage; it holds {"seconds": wall time}
RECORD = "stage.json"  # the pipeline's record of a stage: its "type", "seconds", ...


class ReportError(PosttrainError):
    """A run directory the report cannot be made from."""


def _kl(key: str) -> bool:
    return re.search(r"(^|[/_])kl($|[/_])", key) is not None


# (panel title, y-axis title, does a metric key belong here). First match wins, so the
# order matters: `rewards/accuracy` is an accuracy, not a reward.
KNOWN_PANELS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("Loss", "loss", lambda k: "loss" in k),
    ("Accuracy", "accuracy", lambda k: "accuracy" in k or k.endswith(("/acc", "_acc"))),
    ("Reward", "reward", lambda k: k.startswith(("reward", "eval_reward", "score", "eval_score"))),
    ("KL divergence", "KL", _kl),
    ("Response length", "tokens", lambda k: "length" in k),
    ("Learning rate", "learning rate", lambda k: k in ("lr", "learning_rate") or k.endswith("/lr")),
    ("Gradient norm", "norm", lambda k: "grad_norm" in k),
    ("Log-probabilities", "log p", lambda k: k.startswith(("logps/", "eval_logps/"))),
    ("Entropy", "entropy", lambda k: "entropy" in k),
]
NOT_PLOTTED = {"step", "time"}


@dataclass
class Panel:
    """One plot: a title and the curves (metric key -> (steps, values)) drawn in it."""

    title: str
    y_title: str
    series: dict[str, tuple[list[int], list[float | None]]]


@dataclass
class Stage:
    name: str
    type: str | None
    """The stage type (``sft``, ``dpo``, ``rlvr``, ...) from its record or the recipe."""
    status: str
    """``done``, ``unfinished`` (a folder but no DONE marker) or ``not started``."""
    seconds: float | None = None
    """Wall time from the DONE marker."""
    panels: list[Panel] = field(default_factory=list)
    once: dict[str, Any] = field(default_factory=dict)
    """Metrics logged at a single step (data statistics), by key."""
    eval: dict[str, Any] | None = None
    """``eval.json`` (or, without it, the ``eval/*`` values logged at step -1)."""
    last_step: int | None = None


def _number(v: Any) -> float | None | str:
    """A plottable value: numbers as float, "nan"/"inf" strings (how MetricsWriter stores
    them) as None (a gap), anything else "skip"."""
    if isinstance(v, bool):
        return "skip"
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str) and v.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return None
    return "skip"


def metric_series(rows: list[dict]) -> tuple[dict[str, tuple[list[int], list[float | None]]], dict[str, Any]]:
    """Per numeric key, its (steps, values) in step order, and the non-numeric keys with
    their last value. A resumed stage logs some steps twice: the later line wins. Lines at
    negative steps (the after-stage eval) are not curves."""
    by_key: dict[str, dict[int, Any]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            continue
        for key, value in row.items():
            if key not in NOT_PLOTTED:
                by_key.setdefault(key, {})[step] = value
    curves, once = {}, {}
    for key, points in by_key.items():
        numeric = {s: _number(v) for s, v in points.items()}
        if any(v == "skip" for v in numeric.values()):
            once[key] = points[max(points)]
            continue
        steps = sorted(numeric)
        curves[key] = (steps, [numeric[s] for s in steps])
    return curves, once


def group_panels(curves: dict[str, tuple[list[int], list[float | None]]]) -> tuple[list[Panel], dict[str, Any]]:
    """Known keys into the known panels (in KNOWN_PANELS order), each other key logged at
    two or more steps alone; the other keys logged once (data statistics) are returned as
    ``{key: value}`` for a table."""
    known: dict[str, Panel] = {}
    generic: list[Panel] = []
    once: dict[str, Any] = {}
    for key in sorted(curves):
        if key.startswith(("data_", "data/")) and len(curves[key][0]) == 1:
            once[key] = curves[key][1][0]  # data statistics, logged at step 0
            continue
        for title, y_title, belongs in KNOWN_PANELS:
            if belongs(key):
                known.setdefault(title, Panel(title, y_title, {})).series[key] = curves[key]
                break
        else:
            if len(curves[key][0]) > 1:
                generic.append(Panel(key, key, {key: curves[key]}))
            else:
                once[key] = curves[key][1][0]
    ordered = [known[t] for t, _, _ in KNOWN_PANELS if t in known]
    return ordered + generic, once


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def recipe_stages(run_dir: Path) -> dict[str, dict]:
    """The stage sections of the run's ``recipe.yaml``, in order ({} without one)."""
    import yaml

    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    if not isinstance(stages, dict):
        return {}
    return {str(k): v if isinstance(v, dict) else {} for k, v in stages.items()}


def stage_names(run_dir: Path, sections: dict[str, dict]) -> list[str]:
    """The recipe's stages in order, then any other folder holding a stage's files, oldest
    first."""
    names = list(sections)
    extra = [d for d in run_dir.iterdir() if d.is_dir() and d.name not in names
             and any((d / f).is_file() for f in ("metrics.jsonl", DONE, "eval.json", RECORD))]
    return names + [d.name for d in sorted(extra, key=lambda d: (d.stat().st_mtime, d.name))]


def _seconds(*records: Any) -> float | None:
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("seconds"), (int, float)) and not isinstance(r["seconds"], bool):
            return float(r["seconds"])
    return None


def read_stage(run_dir: Path, name: str, section: dict | None = None) -> Stage:
    d = run_dir / name
    record = _read_json(d / RECORD)
    record = record if isinstance(record, dict) else {}
    kind = record.get("type") or (section or {}).get("type") or (name if section is not None else None)
    if not d.is_dir():
        return Stage(name, kind, "not started")
    stage = Stage(name, kind, "done" if (d / DONE).exists() else "unfinished")
    stage.seconds = _seconds(_read_json(d / DONE), record)
    rows = read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
    curves, other = metric_series(rows)
    stage.panels, once = group_panels(curves)
    stage.once = {**once, **other}
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int) and r["step"] >= 0]
    stage.last_step = max(steps) if steps else None
    ev = _read_json(d / "eval.json")
    if isinstance(ev, dict):
        stage.eval = ev
    else:
        logged = {k.split("/", 1)[1]: v for r in rows if r.get("step") == -1
                  for k, v in r.items() if k.startswith("eval/")}
        stage.eval = logged or None
    return stage


def read_run(run_dir: Path) -> list[Stage]:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    sections = recipe_stages(run_dir)
    names = stage_names(run_dir, sections)
    if not names:
        raise ReportError(f"{run_dir}: not a run directory (no recipe.yaml and no stage folder with "
                          "metrics.jsonl, eval.json or DONE)")
    return [read_stage(run_dir, n, sections.get(n)) for n in names]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested eval results as dotted keys: ``per_verifier.gsm8k.accuracy``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def headline_accuracy(ev: dict | None) -> float | None:
    """The number a stage is compared by: ``accuracy``, or the mean of the suites'
    accuracies when the eval ran several suites."""
    if not ev:
        return None
    acc = ev.get("accuracy")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool):
        return float(acc)
    suites = ev.get("suites")
    if isinstance(suites, dict):
        accs = [s.get("accuracy") for s in suites.values() if isinstance(s, dict)]
        accs = [float(a) for a in accs if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if accs:
            return sum(accs) / len(accs)
    return None
