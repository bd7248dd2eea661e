"""``posttrain soup``: weight averaging of real tiny OLMo-2 folders, through the real
command and the ``soup()`` function."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.cli import main
from posttrain.models import TinyModelSpec, init_tiny_model
from posttrain.soup import SoupError, normalized_weights, soup


def _posttrain(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    return init_tiny_model(root / "a", seed=0), init_tiny_model(root / "b", seed=1)


def test_weights_are_normalized():
    assert normalized_weights(None, 4) == [0.25] * 4
    assert normalized_weights([2, 1, 1], 3) == [0.5, 0.25, 0.25]  # 2/4, 1/4, 1/4
    with pytest.raises(SoupError, match="2 weights for 3 models"):
        normalized_weights([1, 1], 3)
    with pytest.raises(SoupError, match=">= 0"):
        normalized_weights([1, -1], 2)
    with pytest.raises(SoupError, match="sum to 0"):
        normalized_weights([0, 0], 2)


def test_soup_of_two_copies_is_the_original(two_models, tmp_path):
    a, _ = two_models
    out = _posttrain("soup", a, a, "-o", tmp_path / "soup")
    assert out.returncode == 0, out.stderr
    original, souped = load_file(a / "model.safetensors"), load_file(tmp_path / "soup" / "model.safetensors")
    assert original.keys() == souped.keys()
    for name in original:
        assert souped[name].dtype == original[name].dtype
        assert torch.equal(souped[name], original[name]), name  # bit for bit
    # The folder is a complete model: config and tokenizer from the first, loads as is.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "soup")
    tok = AutoTokenizer.from_pretrained(tmp_path / "soup")
    assert model.config.hidden_size == 256 and tok.chat_template
    assert json.loads((tmp_path / "soup" / "soup.json").read_text())["weights"] == [0.5, 0.5]


def test_soup_of_two_models_is_their_mean(two_models, tmp_path):
    a, b = two_models
    soup([a, b], tmp_path / "uniform")
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    mean = load_file(tmp_path / "uniform" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ta[name], tb[name])  # the two really differ
    for k in ta:
        torch.testing.assert_close(mean[k], (ta[k] + tb[k]) / 2, rtol=0, atol=1e-7)
    # A hand-checked element: 0.5 * a + 0.5 * b.
    x, y = ta[name][0, 0].item(), tb[name][0, 0].item()
    assert mean[name][0, 0].item() == pytest.approx(0.5 * x + 0.5 * y, abs=1e-7)

    soup([a, b], tmp_path / "weighted", weights=[3, 1])  # 3/4 a + 1/4 b
    weighted = load_file(tmp_path / "weighted" / "model.safetensors")
    for k in ta:
        torch.testing.assert_close(weighted[k], 0.75 * ta[k] + 0.25 * tb[k], rtol=0, atol=1e-7)


def test_sharded_models_keep_their_layout(two_models, tmp_path):
    a, b = two_models
    shards = []
    for src in (a, b):
        model = AutoModelForCausalLM.from_pretrained(src)
        dst = tmp_path / f"sharded_{src.name}"
        model.save_pretrained(dst, max_shard_size="4MB")
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
        shards.append(dst)
    assert (shards[0] / "model.safetensors.index.json").is_file()
    out = soup(shards, tmp_path / "soup")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name, file in index.items():
        got = load_file(out / file)[name]
        torch.testing.assert_close(got, (ta[name] + tb[name]) / 2, rtol=0, atol=1e-7)
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def test_mismatched_shapes_fail_in_one_line(two_models, tmp_path):
    a, _ = two_models
    wide = init_tiny_model(tmp_path / "wide", seed=0, spec=TinyModelSpec(intermediate_size=512))
    r = _posttrain("soup", a, wide, "-o", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"posttrain soup: error: tensor model.layers.0.mlp.down_proj.weight: shape "
                                f"[256, 688] in {a} but [256, 512] in {wide}")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_other_bad_input_is_one_line(two_models, tmp_path, capsys):
    a, b = two_models
    missing = tmp_path / "nope"
    cases = [
        (["soup", a, missing, "-o", tmp_path / "o1"], f"{missing}: no config.json (not a save_pretrained folder)"),
        (["soup", a, "-o", tmp_path / "o2"], "a soup needs at least two models, got 1"),
        (["soup", a, b, "--weights", "1", "-o", tmp_path / "o3"], "1 weights for 2 models; give one weight per model"),
        (["soup", a, b, "-o", a], f"{a} already exists (choose another output or pass --overwrite)"),
    ]
    r = _posttrain(*cases[0][0])  # one through a real process; the rest through the same entry point
    assert r.returncode == 2 and r.stderr == f"posttrain soup: error: {cases[0][1]}\n"
    for args, message in cases:
        assert main([str(a) for a in args]) == 2
        assert capsys.readouterr().err == f"posttrain soup: error: {message}\n"

    # A tensor missing from the second model is named too.
    partial = tmp_path / "partial"
    init_tiny_model(partial, seed=0)
    tensors = load_file(partial / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SoupError, match=f"^tensor lm_head.weight: in {a} but not in {partial}$"):
        soup([a, partial], tmp_path / "o4")


def test_overwrite_replaces_an_existing_soup(two_models, tmp_path):
    a, b = two_models
    out = soup([a, a], tmp_path / "soup")
    soup([a, b], out, overwrite=True)
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    got = load_file(out / "model.safetensors")["lm_head.weight"]
    torch.testing.assert_close(got, (ta["lm_head.weight"] + tb["lm_head.weight"]) / 2, rtol=0, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soup"]
