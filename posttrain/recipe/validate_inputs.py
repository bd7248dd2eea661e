"""What a run reads, checked before any model loads: the starting model folder and every
local data file of every stage (and of ``eval:``), row by row.

A recipe can be valid field by field and still name a file whose line 3 is not JSON or
whose rows have no ``chosen``; the stage that reads it would only find out after the
stages before it had trained. ``run_recipe`` (and so ``posttrain run``) calls
:func:`check_inputs` before it plans the run, so such a run stops at once with one line
naming the field, the file, the line and the problem. Rows are checked with the same
functions the stages use (``validate_messages``, ``split_row``, ``prompt_messages``, the
verifier registry and its ``check_ground_truth``), so a row that passes here is one the
stage accepts. Token lengths are left to the stages (they need the tokenizer run over
every row); hub datasets and ``from_stage`` data are read only when their stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from posttrain.errors import DataError, PosttrainError
from posttrain.recipe.schema import DataSource, ModelConfig, Recipe

ROW_KINDS: dict[tuple[str, str], str] = {
    ("sft", "train_data"): "chat", ("sft", "eval_data"): "chat",
    ("dpo", "train_data"): "preference", ("dpo", "eval_data"): "preference",
    ("rm", "train_data"): "preference", ("rm", "eval_data"): "preference",
    ("rlvr", "train_data"): "prompt", ("rlvr", "eval_prompts"): "prompt",
    ("pairs", "prompt_data"): "prompt",
}
"""(stage type, field) -> the row format the stage reads from that field's files. A field
not listed (a third-party stage's) is checked only for readable, non-empty rows."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


class InputError(PosttrainError):
    """A data file or model folder the run cannot use; one line naming where."""


def check_inputs(recipe: Recipe) -> None:
    """Raise ``InputError`` (or ``DataError``) for the first input the run could not use."""
    check_model_folder(recipe.model)
    check_output_dir(recipe)
    for name, config in recipe.stages.items():
        kind = config.type or name
        for field, sources in _data_fields(config):
            for i, src in enumerate(sources):
                if src.from_stage is not None or src.path is None or not _is_local(src.path):
                    continue
                check_data_file(src.path, ROW_KINDS.get((kind, field)), f"stages.{name}.{field}.{i}")
    if recipe.eval is not None and recipe.eval.data:
        check_data_file(recipe.eval.data, "prompt", "eval.data")


# ------------------------------------------------------------------------------ model
def check_model_folder(model: ModelConfig) -> None:
    """A local model folder must hold weights, and a tokenizer that fits the weights and can
    format chats (its own template, or OLMo 2's, which needs an EOS token to end turns)."""
    path = Path(model.name_or_path).expanduser()
    if model.name_or_path == "tiny" or not path.is_dir():
        return  # a hub id: nothing is fetched to check it
    where = f"model.name_or_path: {model.name_or_path}"
    if (path / "adapter_config.json").is_file():
        return  # a PEFT adapter: its base model is loaded from where the adapter says
    if not (path / "config.json").is_file():
        raise InputError(f"{where}: no config.json (not a save_pretrained model folder)")
    if not any((path / f).is_file() for f in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise InputError(f"{where}: no weights ({' or '.join(WEIGHT_FILES[:3])}) in the folder")
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a broken folder
        raise InputError(f"{where}: cannot load its tokenizer or config: {str(e).strip().splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None) and tokenizer.eos_token is None:
        raise InputError(f"{where}: the tokenizer has no chat template and no EOS token, so OLMo 2's template "
                         "cannot be used in its place; add a chat_template to tokenizer_config.json")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise InputError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{vocab} rows (config.json vocab_size); the tokenizer is not this model's")


# ------------------------------------------------------------------------ output dir
SPACE_MARGIN = 256 * 2**20
"""Bytes kept free beyond the estimate (metrics, logs, caches, the filesystem's own)."""


def check_output_dir(recipe: Recipe) -> None:
    """The run directory (or, before it exists, the nearest folder above it) must take a
    file, and its disk must have room for what the unfinished stages will write
    (:func:`space_needed`). Writing is tried, not asked (``os.access``), so a read-only
    mount fails here even for root."""
    import shutil
    import tempfile

    out = Path(recipe.output_dir).expanduser().absolute()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"output_dir: {recipe.output_dir}"
    if not existing.is_dir():
        raise InputError(f"{where}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(f"{where}: cannot write in {existing} ({e.strerror or e})") from None
    need = space_needed(recipe, out)
    if need:
        free = shutil.disk_usage(existing).free
        if free < need + SPACE_MARGIN:
            raise InputError(f"{where}: {_size(free)} free on its disk, but the unfinished stages write about "
                             f"{_size(need)} (model weights x (keep_last + 1) checkpoints with optimizer state, plus "
                             f"each stage's model) and {_size(SPACE_MARGIN)} is kept spare; free some space or "
                             "lower keep_last")


def space_needed(recipe: Recipe, run_dir: Path) -> int:
    """Bytes the stages not finished yet in ``run_dir`` will hold on disk at their peak,
    from the size of the starting model's weight files (0 when unknown: a hub id or the
    tiny model): per training stage, ``keep_last + 1`` checkpoints (weights and AdamW's
    two moments, 3x the weights; with LoRA the adapter's state is negligible, 1x) while
    the newest is written, plus its final model."""
    path = Path(recipe.model.name_or_path).expanduser()
    if recipe.model.name_or_path == "tiny" or not path.is_dir():
        return 0
    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in path.glob(pattern))
    total = 0
    for name, config in recipe.stages.items():
        keep = getattr(config, "keep_last", None)
        if keep is None or (run_dir / name / "DONE").exists():
            continue
        per_checkpoint = weights if getattr(config, "lora", None) else 3 * weights
        total += (keep + 1) * per_checkpoint + weights
    return total


def _size(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# ------------------------------------------------------------------------------- data
def check_data_file(path: str, kind: str | None, where: str) -> None:
    """Every row of one local file in the format ``kind`` (``chat``, ``preference``,
    ``prompt``; None: any rows)."""
    rows = list(_rows(path, where))
    if not rows:
        raise DataError(f"{where}: {path}: no rows (the file is empty)")
    check = _CHECKS.get(kind)
    if check is not None:
        check(rows, f"{where}: {path}")


def _check_chat(rows: list[tuple[str, dict]], where: str) -> None:
    from posttrain.data.chat import validate_messages

    for at, row in rows:
        if "messages" not in row:
            raise DataError(f"{where}: {at}: no 'messages' field (an SFT row is "
                            "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]})")
        try:
            validate_messages(row["messages"])
        except DataError as e:
            raise DataError(f"{where}: {at}: {e}") from None


def _check_preference(rows: list[tuple[str, dict]], where: str) -> None:
    # As in the DPO stage, a single unusable row is dropped and counted; a file with no such
    # column, or with no usable row at all, cannot train.
    from posttrain.data.preference import BadRow, split_row

    for key in ("chosen", "rejected"):
        if not any(key in row for _, row in rows):
            raise DataError(f"{where}: no row has a {key!r} field (a preference row has 'chosen' and 'rejected' "
                            "conversations)")
    first_bad = None
    for at, row in rows:
        try:
            split_row(row)
            return
        except BadRow as e:
            first_bad = first_bad or f"{at}: {e}"
    raise DataError(f"{where}: no usable preference pair in {len(rows)} rows (first: {first_bad})")


def _check_prompt(rows: list[tuple[str, dict]], where: str) -> None:
    from posttrain.data.chat import validate_messages
    from posttrain.data.prompts import prompt_messages
    from posttrain.verifiers.registry import check_ground_truth, get_verifier
    from posttrain.verifiers.scoring import row_calls

    known: set[str] = set()
    for at, row in rows:
        here = f"{where}: {at}"
        for key in ("dataset", "ground_truth"):
            if key not in row:
                raise DataError(f"{here}: no {key!r} field (a prompt row has 'messages' or 'prompt', 'dataset' "
                                "naming its verifier, and 'ground_truth')")
        try:
            validate_messages(prompt_messages(row, here), need_assistant=False)
        except DataError as e:
            msg = str(e)
            raise DataError(msg if msg.startswith(here) else f"{here}: {msg}") from None
        try:
            calls = row_calls(0, {**row, "response": ""})
        except ValueError as e:
            raise DataError(f"{here}: {str(e).removeprefix('row 0: ')}") from None
        for name, truth in calls:
            if name not in known:
                try:
                    get_verifier(name)
                except ValueError as e:  # UnknownVerifierError, VerifierLoadError
                    raise DataError(f"{here}: dataset: {e}") from None
                known.add(name)
            # A verifier whose ground truth has a format checks it here; any other gets
            # whatever the row holds (it scores 0 with a reason when it cannot use it).
            problem = check_ground_truth(name, truth)
            if problem is not None:
                raise DataError(f"{here}: ground_truth {str(truth)[:60]!r} cannot be read by verifier "
                                f"{name!r} ({problem})")


_CHECKS: dict[str, Callable[[list[tuple[str, dict]], str], None]] = {
    "chat": _check_chat, "preference": _check_preference, "prompt": _check_prompt}


# ----------------------------------------------------------------------------- helpers
def _is_local(path: str) -> bool:
    from posttrain.data.mixer import is_local

    return is_local(path)


def _data_fields(config) -> Iterator[tuple[str, list[DataSource]]]:
    for field in type(config).model_fields:
        value = getattr(config, field)
        if isinstance(value, list) and value and all(isinstance(v, DataSource) for v in value):
            yield field, value


def _rows(path: str, where: str) -> Iterator[tuple[str, dict]]:
    """``(where in the file, row)``: ``line N`` of a JSONL file, ``row N`` (from 0) of the
    other formats, read as the stages read them."""
    from posttrain.jsonl import read_jsonl

    p = Path(path).expanduser()
    if p.suffix.lower() == ".jsonl":
        try:
            rows = read_jsonl(p)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        # read_jsonl skips blank lines: number the rows by the lines they are on.
        lines = [n for n, line in enumerate(p.read_bytes().splitlines(), 1) if line.strip()]
        yield from ((f"line {n}", row) for n, row in zip(lines, rows))
        return
    from posttrain.data.mixer import load_rows

    try:
        ds = load_rows(DataSource(path=path), required=())
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    for i, row in enumerate(ds):
        yield f"row {i}", dict(row)
