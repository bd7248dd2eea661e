"""The ``posttrain`` command: run, init-model, eval, verify, schema."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _cmd_run(args) -> int:
    from pathlib import Path

    from posttrain.pipeline import plan_run, run_recipe
    from posttrain.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)  # validates everything before a model loads
    if args.dry_run:
        # The plan also checks finished stages in the run directory against the recipe.
        steps = plan_run(recipe, Path(recipe.output_dir), args.force_stage)
        names = [n if c.type in (None, n) else f"{n} ({c.type})" for n, c in recipe.stages.items()]
        print(f"recipe OK: stages {', '.join(names)} -> {recipe.output_dir}")
        print("plan: " + ", ".join(f"{s.name} {s.action}{' (forced)' if s.forced else ''}" for s in steps))
        return 0
    run_dir = run_recipe(recipe, force_stage=args.force_stage)
    print(f"done: {run_dir}")
    return 0


def _cmd_init_model(args) -> int:
    from posttrain.models import init_tiny_model

    out = init_tiny_model(args.out_dir, seed=args.seed)
    print(f"tiny OLMo-2 written to {out}")
    return 0


def _cmd_schema(args) -> int:
    from posttrain.recipe.schema_doc import print_schema

    print_schema(args.stage)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe YAML end to end")
    r.add_argument("recipe", help="path to the recipe YAML")
    r.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set stages.sft.learning_rate=1e-5 (repeatable)")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the recipe, check the run directory against it, print the plan and stop")
    r.add_argument("--force-stage", metavar="NAME", default=None,
                   help="run stage NAME and every stage after it again, deleting their folders first")
    r.set_defaults(func=_cmd_run)

    i = sub.add_parser("init-model", help="create the tiny OLMo-2 in a folder")
    i.add_argument("out_dir")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_cmd_init_model)

    s = sub.add_parser("schema", help="print the recipe fields and their docs")
    s.add_argument("stage", nargs="?", help="a stage name for its fields only")
    s.set_defaults(func=_cmd_schema)

    for module in ("posttrain.evaluation", "posttrain.verifiers.cli", "posttrain.soup", "posttrain.report",
                   "posttrain.generation", "posttrain.data.onpolicy_pairs"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from transformers.utils import logging as hf_logging

    from posttrain.errors import PosttrainError

    hf_logging.disable_progress_bar()  # per-shard "Loading weights" bars drown our own

    try:
        return args.func(args)
    except PosttrainError as e:
        print(f"posttrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"posttrain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
