"""Helpers for the pipeline tests: small chat files, a recipe writer, and two real stages
of the kinds that produce no policy (``side_stages`` in conftest registers them)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from posttrain.recipe.schema import ModelFromStage, StageConfig


def chat_rows(n: int, start: int = 0) -> list[dict]:
    """Addition chats, answered with the working the tiny task uses."""
    rows = []
    for i in range(start, start + n):
        a, b = i % 37, (i * 7) % 41
        rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                  {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n#### {a + b}"}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


class RowsConfig(StageConfig):
    """Copies the first ``n`` rows of a chat file into its output, as a data stage would
    write rows it made; records the model it was handed."""

    source: str
    """A chat JSONL file."""
    n: int = 16
    """Rows to copy."""


class CopyModelConfig(StageConfig):
    """Copies a model folder into its output, as a reward-model stage writes a model that
    is not the policy; records the model it was handed."""

    init_from: str | ModelFromStage | None = None
    """The folder to copy (a path or an earlier stage's model); default the input model."""


def run_rows(ctx) -> None:
    rows = [json.loads(line) for line in Path(ctx.config.source).read_text().splitlines()][: ctx.config.n]
    write_jsonl(ctx.output_path, rows)
    (ctx.stage_dir / "input_model.txt").write_text(ctx.input_model)


def run_copy_model(ctx) -> None:
    source = ctx.resolve_model(ctx.config.init_from) or ctx.input_model
    shutil.copytree(source, ctx.output_path)
    (ctx.stage_dir / "input_model.txt").write_text(ctx.input_model)
    (ctx.stage_dir / "copied_from.txt").write_text(str(source))
