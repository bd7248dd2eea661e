"""``posttrain soup``: average the weights of several ``save_pretrained`` folders of one
architecture (a "model soup", as OLMo 2 made its final checkpoints), uniformly or with
weights.

Tensors are read one at a time from each folder's safetensors files and written shard by
shard in the first model's layout, so memory holds one output shard plus one tensor per
input model, not whole models. Every name, shape and dtype is compared before anything is
written: a mismatch is a one-line error naming the first tensor that differs. The output
is written to a temporary folder beside ``out`` and renamed into place, so an interrupted
soup leaves nothing half-written. Config, tokenizer and other files come from the first
model; ``soup.json`` records the ingredients and their weights.

safetensors has no averaging helper and transformers/peft merge only adapters, so the
mean is computed here (float64 accumulation, then cast back to each tensor's dtype: the
soup of identical copies is bit-for-bit the original)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from posttrain.errors import PosttrainError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class SoupError(PosttrainError):
    """Models that cannot be averaged (missing files, different architectures or tensors)."""


def weight_files(model_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name of a ``save_pretrained`` folder (sharded or not)."""
    if (model_dir / INDEX).is_file():
        try:
            return dict(json.loads((model_dir / INDEX).read_text())["weight_map"])
        except (ValueError, KeyError, TypeError) as e:
            raise SoupError(f"{model_dir}: unreadable {INDEX} ({e})") from None
    if (model_dir / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(model_dir / SINGLE), "pt") as f:
            return {name: SINGLE for name in f.keys()}
    if not model_dir.is_dir():
        raise SoupError(f"{model_dir}: no such model folder")
    raise SoupError(f"{model_dir}: no safetensors weights ({SINGLE} or {INDEX}); "
                    "re-save it with save_pretrained(safe_serialization=True)")


def _tensor_specs(model_dir: Path, files: dict[str, str]) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) from the safetensors headers, without reading tensor data."""
    from safetensors import safe_open

    specs: dict[str, tuple[list[int], str]] = {}
    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        path = model_dir / file
        if not path.is_file():
            raise SoupError(f"{model_dir}: shard {file} named in {INDEX} is missing")
        with safe_open(str(path), "pt") as f:
            for name in names:
                sl = f.get_slice(name)
                specs[name] = (list(sl.get_shape()), sl.get_dtype())
    return specs


def _architecture(model_dir: Path) -> object:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except OSError:
        raise SoupError(f"{model_dir}: no config.json (not a save_pretrained folder)") from None
    except ValueError as e:
        raise SoupError(f"{model_dir}: unreadable config.json ({e})") from None
    return config.get("architectures") or config.get("model_type")


def check_compatible(models: Sequence[Path]) -> dict[str, str]:
    """Raise ``SoupError`` naming the first differing tensor (in the first model's order)
    unless all models have the same architecture, tensor names, shapes and dtypes; return
    the first model's name -> shard map."""
    first = models[0]
    arch = _architecture(first)
    files = weight_files(first)
    specs = _tensor_specs(first, files)
    for other in models[1:]:
        other_arch = _architecture(other)
        if other_arch != arch:
            raise SoupError(f"{other}: architecture {other_arch} differs from {first}'s {arch}")
        other_specs = _tensor_specs(other, weight_files(other))
        for name, (shape, dtype) in specs.items():
            if name not in other_specs:
                raise SoupError(f"tensor {name}: in {first} but not in {other}")
            o_shape, o_dtype = other_specs[name]
            if o_shape != shape:
                raise SoupError(f"tensor {name}: shape {shape} in {first} but {o_shape} in {other}")
            if o_dtype != dtype:
                raise SoupError(f"tensor {name}: dtype {dtype} in {first} but {o_dtype} in {other}")
        extra = [n for n in other_specs if n not in specs]
        if extra:
            raise SoupError(f"tensor {extra[0]}: in {other} but not in {first}")
    return files


def normalized_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Uniform ``1/n`` without weights; otherwise the weights divided by their sum (so
    ``2 1`` means 2/3 and 1/3). Each must be finite and >= 0, with a positive sum."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise SoupError(f"{len(weights)} weights for {n} models; give one weight per model")
    if any(not (w >= 0.0 and w < float("inf")) for w in weights):
        raise SoupError(f"weights must be finite and >= 0, got {weights}")
    total = sum(weights)
    if total <= 0:
        raise SoupError("weights sum to 0")
    return [w / total for w in weights]


def _average_tensor(name: str, handles: list, weights: list[float]):
    import torch

    first = handles[0].get_tensor(name)
    if not (first.is_floating_point() or first.is_complex()):
        return first  # integer buffers (none in OLMo 2) are taken from the first model
    acc = first.to(torch.float64) * weights[0]
    for handle, w in zip(handles[1:], weights[1:]):
        acc.add_(handle.get_tensor(name).to(torch.float64), alpha=w)
    return acc.to(first.dtype)


def _write_shards(models: list[Path], files: dict[str, str], weights: list[float], out: Path) -> None:
    from contextlib import ExitStack

    from safetensors import safe_open
    from safetensors.torch import save_file

    shards: dict[str, list[str]] = {}
    for name, file in files.items():
        shards.setdefault(file, []).append(name)
    other_files = [weight_files(m) for m in models[1:]]
    for shard, names in shards.items():
        with ExitStack() as stack:
            opened: dict[tuple[int, str], object] = {}

            def handle(i: int, file: str):
                key = (i, file)
                if key not in opened:
                    opened[key] = stack.enter_context(safe_open(str(models[i] / file), "pt"))
                return opened[key]

            tensors = {}
            for name in names:
                hs = [handle(0, shard)] + [handle(i + 1, of[name]) for i, of in enumerate(other_files)]
                tensors[name] = _average_tensor(name, hs, weights)
            save_file(tensors, str(out / shard), metadata={"format": "pt"})


def soup(models: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
         *, overwrite: bool = False) -> Path:
    """Average ``models`` (``save_pretrained`` folders) into ``out``; return ``out``.

    ``weights``: one per model, normalized to sum 1 (uniform when None). Raises
    ``SoupError`` (one line) for fewer than two models, an existing ``out`` without
    ``overwrite``, or models whose architecture or tensors differ."""
    models = [Path(m) for m in models]
    out = Path(out)
    if len(models) < 2:
        raise SoupError(f"a soup needs at least two models, got {len(models)}")
    w = normalized_weights(weights, len(models))
    if out.exists() and not overwrite:
        raise SoupError(f"{out} already exists (choose another output or pass --overwrite)")
    if any(out.resolve() == m.resolve() for m in models):
        raise SoupError(f"{out} is one of the models being averaged; write the soup elsewhere")
    files = check_compatible(models)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        weight_names = set(files.values()) | {INDEX}
        for item in sorted(models[0].iterdir()):
            # The first model's config, tokenizer, chat template, generation config...;
            # subfolders (checkpoints/, adapter/) belong to that run, not to the soup.
            if item.is_file() and item.name not in weight_names and not item.name.endswith((".bin", ".pt")):
                shutil.copy2(item, tmp / item.name)
        if (models[0] / INDEX).is_file():
            shutil.copy2(models[0] / INDEX, tmp / INDEX)
        _write_shards(models, files, w, tmp)
        (tmp / "soup.json").write_text(json.dumps(
            {"models": [str(m) for m in models], "weights": w}, indent=2) + "\n")
        if out.exists():  # overwrite: swap, so a failure before here keeps the old soup
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _cmd_soup(args) -> int:
    out = soup(args.models, args.output, args.weights, overwrite=args.overwrite)
    w = normalized_weights(args.weights, len(args.models))
    print(f"soup of {len(args.models)} models (weights {', '.join(f'{x:.4g}' for x in w)}) written to {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("soup", help="average the weights of several models of one architecture")
    p.add_argument("models", nargs="+", help="save_pretrained folders (safetensors), at least two")
    p.add_argument("-o", "--output", required=True, help="folder to write the soup to")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model, normalized to sum 1 (default: uniform)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_soup)
