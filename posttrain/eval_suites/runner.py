"""Loading a suite's rows (a local file, or the hub by the data set's public name) and
running suites on a policy: greedy generation, then each suite's metric."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from posttrain.errors import DataError
from posttrain.eval_suites.suites import SUITES, Suite, check_source_row

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def _is_local(source: str) -> bool:
    return source.endswith(_LOCAL_SUFFIXES) or source.startswith((".", "/", "~")) or Path(source).exists()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_source(suite: Suite, source: str | None) -> tuple[list[dict], str]:
    """Raw rows and a label for messages: a local file, a hub name, or (None) the suite's
    own hub data set."""
    if source is not None and _is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{suite.name}: {source}: no such data file")
        if path.suffix == ".jsonl":
            from posttrain.jsonl import read_jsonl

            return read_jsonl(path), str(source)
        import datasets

        builder = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(path.suffix)
        if builder is None:
            raise DataError(f"{suite.name}: {source}: unknown data file type (use {', '.join(_LOCAL_SUFFIXES)})")
        try:
            return list(datasets.load_dataset(builder, data_files=str(path), split="train")), str(source)
        except Exception as e:  # datasets raises many types for a malformed file
            raise DataError(f"{suite.name}: {source}: cannot read as {builder}: {_first_line(e)}") from None
    import datasets

    name = source or suite.hub_path
    config = suite.hub_config if name == suite.hub_path else None
    label = suite.hub_label if name == suite.hub_path else f"{name} ({suite.hub_split} split)"
    try:
        ds = datasets.load_dataset(name, config, split=suite.hub_split)
    except Exception as e:  # offline, unknown name, gated...: one line, with the way out
        raise DataError(f"{suite.name}: cannot load {label} from the hub: {_first_line(e)} "
                        f"(a local copy: --data {suite.name}=FILE)") from None
    return list(ds), label


def load_suite_rows(suite: Suite, source: str | None = None, limit: int | None = None) -> list[dict]:
    """The suite's eval rows (``messages``, ``dataset``, ``ground_truth``, ...), checked
    before any model loads: missing columns, and ground truth its verifier cannot use."""
    raw, label = _read_source(suite, source)
    raw = raw[:limit] if limit is not None else raw
    if not raw:
        raise DataError(f"{suite.name}: {label}: no rows")
    rows = []
    for i, r in enumerate(raw):
        where = f"{suite.name}: {label}: row {i}"
        check_source_row(suite, r, where)
        row = suite.to_row(r)
        _check_ground_truth(row, where)
        rows.append(row)
    return rows


def _check_ground_truth(row: dict, where: str) -> None:
    if row["dataset"] == "gsm8k":
        from posttrain.verifiers.gsm8k import gold_number

        if gold_number(row["ground_truth"]) is None:
            raise DataError(f"{where}: answer {str(row['ground_truth'])[-40:]!r} has no number")
    elif row["dataset"] == "ifeval":
        from posttrain.eval_suites.ifeval_metrics import follow

        try:  # builds every instruction's check, so bad ids or kwargs fail here
            follow("", row["ground_truth"])
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: {e}") from None


def score_suite(suite: Suite, rows: Sequence[dict], responses: Sequence[str], *,
                workers: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """The suite's summary and each row with ``response``, ``score`` (and ``reason``)."""
    if suite.name == "ifeval":
        from posttrain.eval_suites.ifeval_metrics import accuracies, follow

        results = [follow(resp, r["ground_truth"]) for r, resp in zip(rows, responses)]
        scored = [{**r, "suite": suite.name, "response": resp, "score": float(all(f.strict)),
                   "follow_instruction_list": f.strict, "follow_instruction_list_loose": f.loose}
                  for r, resp, f in zip(rows, responses, results)]
        summary = accuracies(results)
        return {"n": summary["n"], "accuracy": summary["prompt_level_strict"], **summary}, scored
    from posttrain.verifiers.scoring import score_rows

    to_score = [{**r, "response": resp, "prompt": r["messages"][-1]["content"]} for r, resp in zip(rows, responses)]
    results = score_rows(to_score, workers=workers)
    scored = [{**r, "suite": suite.name, "score": float(res.score), "reason": res.reason}
              for r, res in zip(to_score, results)]
    n = len(scored)
    return {"n": n, "accuracy": round(sum(s["score"] for s in scored) / n, 6) if n else 0.0}, scored


def run_suites(policy, loaded: Sequence[tuple[Suite, list[dict]]], *, max_new_tokens: int | None = None,
               batch_size: int = 64, workers: int | None = None,
               progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """Generate greedily for each suite's rows (``max_new_tokens``, or the suite's own
    length) and score them: ``{"suites": {name: summary}}`` and all scored rows."""
    summaries: dict[str, Any] = {}
    scored_all: list[dict] = []
    for suite, rows in loaded:
        tokens = max_new_tokens or suite.max_new_tokens
        print(f"[{suite.name}] {len(rows)} prompts, up to {tokens} new tokens", file=sys.stderr)
        responses = policy.generate([r["messages"] for r in rows], max_new_tokens=tokens,
                                    batch_size=batch_size, progress=progress)
        summary, scored = score_suite(suite, rows, responses, workers=workers)
        summaries[suite.name] = summary
        scored_all += scored
    return {"suites": summaries}, scored_all


def format_summary(summary: dict[str, Any]) -> list[str]:
    """One line per suite for the terminal."""
    lines = []
    for name, s in summary["suites"].items():
        if "prompt_level_strict" in s:
            lines.append(f"{name}: prompt-level strict {s['prompt_level_strict']:.4f}, instruction-level strict "
                         f"{s['inst_level_strict']:.4f} (loose {s['prompt_level_loose']:.4f} / "
                         f"{s['inst_level_loose']:.4f}) on {s['n']} prompts")
        else:
            lines.append(f"{name}: accuracy {s['accuracy']:.4f} on {s['n']} rows")
    return lines


def parse_data_args(suites: Sequence[Suite], data: Sequence[str] | None) -> dict[str, str | None]:
    """``--data`` values for suites: ``SUITE=SOURCE`` each, or one plain SOURCE when a
    single suite runs. A suite without one loads its hub data set."""
    sources: dict[str, str | None] = {s.name: None for s in suites}
    for item in data or []:
        name, sep, source = item.partition("=")
        if sep and name.strip().lower() in sources:
            sources[name.strip().lower()] = source
        elif sep and name.strip().lower() in SUITES:
            raise DataError(f"--data {item}: {name!r} is not one of the suites run ({', '.join(sources)})")
        elif len(suites) == 1:
            sources[suites[0].name] = item
        else:
            raise DataError(f"--data {item}: with several suites, name the suite: --data SUITE=FILE")
    return sources
