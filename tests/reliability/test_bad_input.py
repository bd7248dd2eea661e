"""Bad input stops ``posttrain run`` before any model trains: exit status 2 and one line on
stderr naming the field, file, line or row and the problem; a traceback only with
``--debug``. Each case runs the real command in a subprocess on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"

CHAT = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
PAIR = {"chosen": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
        "rejected": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "3"}]}
PROMPT = {"messages": [{"role": "user", "content": "1+1?"}], "dataset": "gsm8k", "ground_truth": "2"}

RECIPE = """
output_dir: run
model: {{name_or_path: {model}}}
stages:
  sft:
    train_data: [{{path: sft.jsonl}}]
    learning_rate: 1.0e-3
    max_steps: 1
    per_device_batch_size: 1
"""


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A folder with good data files and a good one-stage SFT recipe (``recipe.yaml``)."""
    _jsonl(tmp_path / "sft.jsonl", [CHAT])
    _jsonl(tmp_path / "pairs.jsonl", [PAIR])
    _jsonl(tmp_path / "prompts.jsonl", [PROMPT])
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE.format(model=TINY_BASE)))
    return tmp_path


def posttrain(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_bad_input(r: subprocess.CompletedProcess, workdir: Path, message: str) -> None:
    """Exit 2, exactly one stderr line (the message), and no stage wrote a model."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == [f"posttrain run: error: {message}"], r.stderr[-3000:]
    assert not list((workdir / "run").glob("*/model")), "a stage trained before the error"


def _known_stages() -> str:
    from posttrain.stages import stage_names

    return ", ".join(stage_names())


# --------------------------------------------------------------------------- recipes
RLVR = "{train_data: [{path: prompts.jsonl}], algorithm: %s, max_steps: 1}"
RECIPE_CASES = [
    # (id, --set overrides, the message after "posttrain run: error: ")
    ("unknown key", ["stages.sft.learning_rat=1e-3"], "stages.sft.learning_rat: unknown field"),
    ("wrong type", ["stages.sft.max_steps=many"],
     "stages.sft.max_steps: Input should be a valid integer, unable to parse string as an integer"),
    ("zero learning rate", ["stages.sft.learning_rate=0"], "stages.sft.learning_rate: Input should be greater than 0"),
    ("negative learning rate", ["stages.sft.learning_rate=-1e-3"],
     "stages.sft.learning_rate: Input should be greater than 0"),
    ("missing data file", ["stages.sft.train_data=[{path: gone.jsonl}]"],
     "stages.sft.train_data.0.path: no such data file: gone.jsonl"),
    ("unknown algorithm", ["stages.rlvr=" + RLVR % "reinforce"],
     "stages.rlvr.algorithm: Input should be 'grpo' or 'ppo'"),
    ("unknown dpo loss", ["stages.dpo={train_data: [{path: pairs.jsonl}], loss: kto}"], None),
    ("type names no runner", ["stages.sft.type=rlhf"], None),
    ("stage order", ["stages.sft.train_data=[{from_stage: pairs}]",
                     "stages.pairs={prompt_data: [{path: prompts.jsonl}]}"],
     "stages.sft.train_data.0.from_stage: stage 'pairs' runs after 'sft'; a stage reads only what an earlier "
     "stage wrote, so put 'pairs' before 'sft'"),
]


@pytest.mark.parametrize("overrides,message", [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe(workdir, overrides, message):
    if message is None and "loss: kto" in overrides[0]:
        from posttrain.losses.dpo import dpo_loss_names

        message = f"stages.dpo.loss: unknown DPO loss 'kto' (known: {', '.join(dpo_loss_names())})"
    elif message is None:
        message = f"stages.sft.type: unknown stage type 'rlhf' (known: {_known_stages()})"
    args = ["run", "recipe.yaml"] + [a for o in overrides for a in ("--set", o)]
    assert_bad_input(posttrain(workdir, *args), workdir, message)


# ------------------------------------------------------------------------------ data
def _bytes_rows(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


NO_ASSISTANT_CONTENT = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": " "}]}
DATA_CASES = [
    # (id, stage section (None: the SFT data itself), file content, message)
    ("sft without messages", None, _bytes_rows(CHAT, {"conversation": []}),
     "stages.sft.train_data.0: bad.jsonl: line 2: no 'messages' field (an SFT row is "
     '{"messages": [{"role": ..., "content": ...}, ...]})'),
    ("empty file", None, b"", "stages.sft.train_data.0: bad.jsonl: no rows (the file is empty)"),
    ("blank lines only", None, b"\n\n  \n", "stages.sft.train_data.0: bad.jsonl: no rows (the file is empty)"),
    ("empty assistant turn", None, _bytes_rows(CHAT, CHAT, NO_ASSISTANT_CONTENT),
     "stages.sft.train_data.0: bad.jsonl: line 3: message 1 (assistant) has empty content"),
    ("non-UTF-8 bytes", None, _bytes_rows(CHAT, b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'),
     "stages.sft.train_data.0: bad.jsonl: line 2: not UTF-8 text (byte 0xe9 at offset 46); "
     "re-encode the file as UTF-8"),
    ("JSON syntax error", None, _bytes_rows(CHAT, CHAT, CHAT, b'{"messages": [}'),
     "stages.sft.train_data.0: bad.jsonl: line 4: bad JSON (Expecting value)"),
    ("dpo without rejected", "dpo", _bytes_rows({"chosen": PAIR["chosen"]}),
     "stages.dpo.train_data.0: bad.jsonl: no row has a 'rejected' field (a preference row has 'chosen' and "
     "'rejected' conversations)"),
    ("dpo without chosen", "dpo", _bytes_rows({"rejected": PAIR["rejected"]}),
     "stages.dpo.train_data.0: bad.jsonl: no row has a 'chosen' field (a preference row has 'chosen' and "
     "'rejected' conversations)"),
    ("rlvr without ground_truth", "rlvr", _bytes_rows(PROMPT, {k: v for k, v in PROMPT.items() if k != "ground_truth"}),
     "stages.rlvr.train_data.0: bad.jsonl: line 2: no 'ground_truth' field (a prompt row has 'messages' or "
     "'prompt', 'dataset' naming its verifier, and 'ground_truth')"),
    ("rlvr without dataset", "rlvr", _bytes_rows({k: v for k, v in PROMPT.items() if k != "dataset"}),
     "stages.rlvr.train_data.0: bad.jsonl: line 1: no 'dataset' field (a prompt row has 'messages' or "
     "'prompt', 'dataset' naming its verifier, and 'ground_truth')"),
    ("rlvr without messages", "rlvr", _bytes_rows({"dataset": "gsm8k", "ground_truth": "2"}),
     "stages.rlvr.train_data.0: bad.jsonl: line 1: needs `messages` (prompt turns) or `prompt`"),
    ("unknown verifier", "rlvr", _bytes_rows(PROMPT, {**PROMPT, "dataset": "gsm9k"}), None),
    ("unparsable ground truth", "rlvr", _bytes_rows({**PROMPT, "ground_truth": "two"}),
     "stages.rlvr.train_data.0: bad.jsonl: line 1: ground_truth 'two' cannot be read by verifier 'gsm8k' "
     "(it has no number)"),
    ("eval file ground truth", "eval", _bytes_rows({**PROMPT, "ground_truth": "#### ?"}),
     "eval.data: bad.jsonl: line 1: ground_truth '#### ?' cannot be read by verifier 'gsm8k' (it has no number)"),
]
SECTIONS = {
    "dpo": ["stages.dpo={train_data: [{path: bad.jsonl}], max_steps: 1}"],
    "rlvr": ["stages.rlvr={train_data: [{path: bad.jsonl}], max_steps: 1}"],
    "eval": ["eval={data: bad.jsonl}"],
    None: ["stages.sft.train_data=[{path: bad.jsonl}]"],
}


@pytest.mark.parametrize("section,content,message", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data(workdir, section, content, message):
    (workdir / "bad.jsonl").write_bytes(content)
    if message is None:
        # The list of known verifiers is the registry's, as a fresh process sees it (tests
        # that ran before in this one may have registered their own).
        known = subprocess.run([sys.executable, "-c", "from posttrain.verifiers.registry import available_verifiers; "
                                "print(', '.join(available_verifiers()))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        message = (f"stages.rlvr.train_data.0: bad.jsonl: line 2: dataset: unknown verifier 'gsm9k'; known: "
                   f"{known} (or a 'module:object' path)")
    args = ["run", "recipe.yaml"] + [a for o in SECTIONS[section] for a in ("--set", o)]
    assert_bad_input(posttrain(workdir, *args), workdir, message)


def test_prompt_longer_than_max_length(workdir):
    """Over-long conversations are dropped and counted; when none is left the stage stops
    before training (after loading the model: lengths need the tokenizer run over every row)."""
    long_chat = {"messages": [{"role": "user", "content": "1 + 1 + 1 + 1 + 1 + 1 + 1 + 1?"},
                              {"role": "assistant", "content": "8"}]}
    _jsonl(workdir / "sft.jsonl", [long_chat])
    r = posttrain(workdir, "run", "recipe.yaml", "--set", "stages.sft.max_length=8")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == ("posttrain run: error: stages.sft.train_data: no examples left after "
                                         "tokenization (1 longer than max_length 8 were dropped)")
    assert not (workdir / "run" / "sft" / "model").exists()


# ---------------------------------------------------------------------------- models
def _model_copy(workdir: Path) -> Path:
    model = workdir / "model"
    shutil.copytree(TINY_BASE, model)
    return model


def test_model_folder_without_weights(workdir):
    model = _model_copy(workdir)
    (model / "model.safetensors").unlink()
    r = posttrain(workdir, "run", "recipe.yaml", "--set", f"model.name_or_path={model}")
    assert_bad_input(r, workdir, f"model.name_or_path: {model}: no weights (model.safetensors or "
                                 "model.safetensors.index.json or pytorch_model.bin) in the folder")


def test_tokenizer_without_chat_template_or_eos(workdir):
    model = _model_copy(workdir)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config["eos_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    r = posttrain(workdir, "run", "recipe.yaml", "--set", f"model.name_or_path={model}")
    assert_bad_input(r, workdir, f"model.name_or_path: {model}: the tokenizer has no chat template and no EOS "
                                 "token, so OLMo 2's template cannot be used in its place; add a chat_template to "
                                 "tokenizer_config.json")


def test_tokenizer_vocabulary_not_the_models(workdir):
    """A tokenizer with tokens added but the embedding never resized: token ids past the
    embedding would index out of range in the first forward pass."""
    from transformers import AutoTokenizer

    model = _model_copy(workdir)
    tok = AutoTokenizer.from_pretrained(str(model))
    tok.add_tokens([f"<tool_{i}>" for i in range(8)])
    tok.save_pretrained(str(model))
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    r = posttrain(workdir, "run", "recipe.yaml", "--set", f"model.name_or_path={model}")
    assert_bad_input(r, workdir, f"model.name_or_path: {model}: the tokenizer has {len(tok)} tokens but the model's "
                                 f"embedding has {vocab} rows (config.json vocab_size); the tokenizer is not this "
                                 "model's")


# ----------------------------------------------------------------------------- --debug
EXPLODING_STAGE = """
import sys
from posttrain.recipe.schema import StageConfig
from posttrain.stages import register_stage

@register_stage("explode", StageConfig)
def run(ctx):
    raise RuntimeError("the third-party stage broke\\n  on two lines")

from posttrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_unexpected_error_is_one_line_without_debug_and_a_traceback_with_it(workdir):
    (workdir / "explode.py").write_text(EXPLODING_STAGE)
    (workdir / "explode.yaml").write_text(f"output_dir: run\nmodel: {{name_or_path: {TINY_BASE}}}\n"
                                          "stages: {boom: {type: explode}}\n")
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache")}
    cmd = [sys.executable, "explode.py"]
    r = subprocess.run(cmd + ["run", "explode.yaml"], cwd=workdir, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == ("posttrain run: error: RuntimeError: the third-party stage broke on two "
                                         "lines (rerun with --debug for the traceback)")
    r = subprocess.run(cmd + ["--debug", "run", "explode.yaml"], cwd=workdir, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and 'raise RuntimeError("the third-party' in r.stderr


def test_debug_shows_the_traceback_of_bad_input_and_still_exits_2(workdir):
    r = posttrain(workdir, "--debug", "run", "recipe.yaml", "--set", "stages.sft.learning_rate=0")
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.splitlines()[-1] == "posttrain run: error: stages.sft.learning_rate: Input should be greater than 0"
