"""``posttrain verify IN.jsonl -o OUT.jsonl``: score a JSONL file of responses.

Each input row has ``response``, ``dataset`` (a verifier name or a list), ``ground_truth``
and optional ``prompt``; each output row is the input row plus ``score`` and ``reason``,
in the same order. Bad input is reported in one line on stderr with exit status 2.

Responses are judged in the reasoning format by default (the final answer after
``</think>``, inside ``<answer>`` tags; see :mod:`posttrain.verifiers.reasoning`);
``--no-reasoning-format`` judges them as they are. ``--code-sandbox`` picks the code
verifier's sandbox mode; the default ``auto`` uses bubblewrap when it is installed and
otherwise warns and falls back to resource limits alone.
"""
from __future__ import annotations

import argparse
import os
import sys

from posttrain.errors import DataError
from posttrain.jsonl import read_jsonl, write_jsonl_atomic

EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    pass


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``verify`` subcommand on an argparse ``subparsers`` object."""
    from .scoring import DEFAULT_TIMEOUT

    p = subparsers.add_parser(
        "verify",
        help="score responses in a JSONL file with the reward verifiers",
        description="Score each row (response, dataset, ground_truth[, prompt]) and write it back "
        "with 'score' and 'reason' added, in the same order.",
    )
    p.add_argument("input", help="input JSONL file")
    p.add_argument("-o", "--output", required=True, help="output JSONL file (written atomically)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per verifier call (default: %(default)s)")
    p.add_argument("--multiplier", type=float, default=1.0, help="multiply every score (RLVR uses 10)")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W",
                   help="weight of a verifier in rows with several (repeatable; default 1)")
    p.add_argument("--no-reasoning-format", dest="reasoning_format", action="store_false",
                   help="judge responses as they are, not the final answer after </think> "
                   "(for data where <think>/<answer> tags are literal content)")
    p.add_argument("--code-sandbox", choices=("auto", "bwrap", "rlimits_only"), default=None,
                   help="how the code verifier runs programs (default: $POSTTRAIN_CODE_SANDBOX or auto: "
                   "bubblewrap when installed, else resource limits only, with a warning)")
    p.set_defaults(func=run_verify)
    return p


def _read_rows(path: str) -> list[dict]:
    try:
        return read_jsonl(path, required=("response", "dataset", "ground_truth"))
    except DataError as e:
        raise _BadInput(str(e)) from None


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise _BadInput(f"--weight {item!r}: expected NAME=NUMBER") from None
    return weights


def run_verify(args: argparse.Namespace) -> int:
    from .registry import UnknownVerifierError
    from .scoring import score_rows

    try:
        if args.workers is not None and args.workers < 0:
            raise _BadInput("--workers must be >= 0")
        if args.timeout <= 0:
            raise _BadInput("--timeout must be positive")
        weights = _parse_weights(args.weight)
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            raise _BadInput(f"output directory of {args.output} does not exist")
        rows = _read_rows(args.input)
        if args.code_sandbox is not None:
            from .code.sandbox import set_sandbox_mode

            set_sandbox_mode(args.code_sandbox)  # before the workers start: they inherit it
        results = score_rows(rows, weights=weights, multiplier=args.multiplier,
                             workers=args.workers, timeout=args.timeout,
                             reasoning_format=args.reasoning_format)
    except _BadInput as e:
        print(f"posttrain verify: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UnknownVerifierError, ValueError) as e:
        print(f"posttrain verify: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = []
    for row, res in zip(rows, results):
        row = dict(row)
        row["score"] = res.score
        row["reason"] = res.reason
        out.append(row)
    try:
        write_jsonl_atomic(args.output, out)
    except OSError as e:
        print(f"posttrain verify: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    n = len(results)
    mean = sum(r.score for r in results) / n if n else 0.0
    print(f"verified {n} rows: mean score {mean:.4f}, {results.n_errors} errors, "
          f"{results.n_timeouts} timeouts, {results.n_crashes} crashes -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["verify"]:
        argv = ["verify", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
