"""The ``posttrain`` command: run, init-model, eval, verify, schema."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback


def _cmd_run(args) -> int:
    from pathlib import Path

    from posttrain.errors import disk_full_error
    from posttrain.pipeline import plan_run, run_recipe
    from posttrain.recipe import load_recipe
    from posttrain.recipe.validate_inputs import check_inputs

    recipe = load_recipe(args.recipe, args.set)  # validates everything before a model loads
    if args.dry_run:
        check_inputs(recipe)  # the model folder and every local data file, row by row (run_recipe does it too)
        # The plan also checks finished stages in the run directory against the recipe.
        steps = plan_run(recipe, Path(recipe.output_dir), args.force_stage)
        names = [n if c.type in (None, n) else f"{n} ({c.type})" for n, c in recipe.stages.items()]
        print(f"recipe OK: stages {', '.join(names)} -> {recipe.output_dir}")
        print("plan: " + ", ".join(f"{s.name} {s.action}{' (forced)' if s.forced else ''}" for s in steps))
        return 0
    try:
        run_dir = run_recipe(recipe, force_stage=args.force_stage)
    except Exception as e:  # noqa: BLE001 (re-raised unless a full disk explains it)
        raise disk_full_error(recipe.output_dir, e) or e
    _leave_process_group()
    print(f"done: {run_dir}")
    return 0


def _leave_process_group() -> None:
    """Under a multi-process launch, leave the process group before the interpreter exits
    (``run_recipe`` ends at a barrier, so every process is past its last collective).
    Left to interpreter shutdown, the backend's threads are torn down in no set order: torch
    warns, and a DeepSpeed process once aborted at exit ("terminate called without an
    active exception") after its run had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
    p.add_argument("--debug", action="store_true",
                   help="on an error, print the full traceback (by default: one line)")
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
        # Bad input: the message says what and where; a traceback would only bury it.
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"posttrain {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"posttrain {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a failure outside our checks (a library, the OS)
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
            return 1
        print(f"posttrain {args.command}: error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _close_progress_bars() -> None:
    """A tqdm bar the exception left open would redraw itself after the error line when the
    interpreter exits; closed now, it ends its own line first."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 (cosmetic: never hide the real error)
        pass


def _one_line(e: BaseException) -> str:
    """The exception's message on one line (some libraries' messages span several)."""
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
