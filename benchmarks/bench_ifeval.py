"""Scoring speed of the ``ifeval`` verifier on IFEval's 541 GPT-4 responses.

``conformance_rows()`` builds benchmark rows ``{"response", "dataset": "ifeval",
"ground_truth"}`` from ``shared/conformance/ifeval`` beside the project;
``python benchmarks/bench_ifeval.py`` scores them in one process and prints rows/s
(first pass includes loading langdetect's profiles and the Punkt model).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SHARED_IFEVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "ifeval"


def conformance_rows(folder: Path = SHARED_IFEVAL) -> list[dict]:
    """One row per GPT-4 response, with its IFEval instructions as ground truth."""
    with open(folder / "input_data.jsonl", encoding="utf-8") as handle:
        prompts = {row["prompt"]: row for row in map(json.loads, handle)}
    rows = []
    with open(folder / "input_response_data_gpt4_20231107_145030.jsonl", encoding="utf-8") as handle:
        for answer in map(json.loads, handle):
            source = prompts[answer["prompt"]]
            truth = {"instruction_id_list": source["instruction_id_list"], "kwargs": source["kwargs"]}
            rows.append({"prompt": answer["prompt"], "response": answer["response"], "dataset": "ifeval", "ground_truth": truth})
    return rows


def main() -> int:
    from posttrain.verifiers.ifeval import verify_ifeval

    rows = conformance_rows()
    for label in ("cold", "warm"):
        start = time.perf_counter()
        total = sum(verify_ifeval(row["response"], row["ground_truth"], row["prompt"])[0] for row in rows)
        seconds = time.perf_counter() - start
        print(f"{label}: {len(rows)} rows in {seconds:.2f}s = {len(rows) / seconds:.0f} rows/s (mean score {total / len(rows):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
