"""The precision a run picks, decided by pure functions so a GPU's decision is tested here:
trained weights load in fp32 and compute in bf16 on a bf16 GPU (``dtype: auto``,
``mixed_precision: auto``, the defaults), frozen ones stay bf16 there, a CPU computes in
fp32, and fp16 is refused for training. Then the decided default configuration, run on
this CPU, moves the weights at Tülu 3's DPO learning rate, where the old default (bf16
weights updated in place) does not."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.recipe.load import validate_recipe
from posttrain.recipe.schema import ModelConfig, TrainStageConfig
from posttrain.training import LossOutput, OptimizerSettings, StepEngine, get_accelerator
from posttrain.training.batching import pad_collate
from posttrain.training.precision import compute_precision, weights_dtype

GPU = dict(bf16_supported=True)


@pytest.fixture(autouse=True)
def _fp32_afterwards():
    yield
    get_accelerator("no")  # the accelerator's precision is per process


def test_weights_dtype_table():
    # (recipe dtype, device, trainable, lora) -> dtype, on a bf16-capable GPU
    table = [
        ("auto", "cuda", True, False, torch.float32),  # the fp32 master copy
        ("auto", "cuda", False, False, torch.bfloat16),  # reference, rollout engine, eval
        ("auto", "cuda", True, True, torch.bfloat16),  # LoRA: frozen base; peft keeps adapters fp32
        ("auto", "cpu", True, False, torch.float32),
        ("auto", "cpu", False, False, torch.float32),  # CPU bf16 matmuls are slow
        ("bfloat16", "cuda", True, False, torch.bfloat16),  # asked for explicitly (the engine warns)
        ("float32", "cuda", False, False, torch.float32),
        ("float16", "cuda", False, False, torch.float16),  # frozen fp16 is fine
    ]
    for dtype, device, trainable, lora, expected in table:
        assert weights_dtype(dtype, device, trainable=trainable, lora=lora, **GPU) == expected, (dtype, device,
                                                                                                   trainable, lora)
    # a GPU without bf16 (pre-Ampere): fp32 everywhere under auto
    assert weights_dtype("auto", "cuda", trainable=False, bf16_supported=False) == torch.float32
    with pytest.raises(PosttrainError, match="model.dtype: float16"):
        weights_dtype("float16", "cuda", trainable=True, **GPU)


def test_compute_precision_table():
    assert compute_precision("auto", "cuda", **GPU) == "bf16"
    assert compute_precision("auto", "cuda", bf16_supported=False) == "no"
    assert compute_precision("auto", "cpu", **GPU) == "no"
    assert compute_precision("bf16", "cpu") == "bf16"
    assert compute_precision("no", "cuda", **GPU) == "no"
    with pytest.raises(PosttrainError, match="fp16"):
        compute_precision("fp16", "cuda", **GPU)


def test_fp16_in_a_recipe_fails_naming_the_field(tmp_path):
    from posttrain.errors import PosttrainError as Err

    stage = {"train_data": [{"path": "some/hub-set"}], "learning_rate": 1e-5, "mixed_precision": "fp16"}
    with pytest.raises(Exception) as info:
        validate_recipe({"output_dir": str(tmp_path), "stages": {"sft": stage}})
    assert isinstance(info.value, Err) and "stages.sft.mixed_precision" in str(info.value)


def _fraction_changed(before, model) -> float:
    """Of the weights outside the input embedding (whose unused rows get no gradient)."""
    changed = total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        changed += int((p.detach() != before[name]).sum())
        total += p.numel()
    return changed / total


def _one_step(small_model_dir, examples, weights: torch.dtype, compute: str) -> float:
    from transformers import AutoModelForCausalLM

    engine = StepEngine(mixed_precision=compute)
    model = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=weights)
    tm = engine.add_model("policy", model, OptimizerSettings(learning_rate=5e-7, lr_scheduler="constant",
                                                             max_grad_norm=1.0), total_steps=1)
    before = {n: p.detach().clone() for n, p in tm.model.named_parameters()}

    def loss_fn(module, batch):
        logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        mask = batch["labels"][:, 1:] != -100
        nll = -logp.gather(-1, batch["labels"][:, 1:].clamp(min=0)[..., None]).squeeze(-1)
        return LossOutput((nll * mask).sum(), mask.sum())

    exs = examples(8, seed=5)
    engine.step("policy", [pad_collate(exs, pad_id=1)], loss_fn)
    assert all(p.dtype == weights for p in tm.model.parameters())
    return _fraction_changed(before, tm.model)


def test_the_gpu_default_trains_at_tuelu_dpo_learning_rate(small_model_dir, examples):
    """The defaults of a recipe (``model.dtype: auto``, a stage's ``mixed_precision:
    auto``) as a bf16 GPU resolves them: fp32 weights, bf16 compute. One AdamW step at lr
    5e-7 (Tülu 3 DPO) moves a weight by ~5e-7: fp32 resolves that near 0.02 (spacing
    ~1.9e-9), bf16 does not (spacing ~1.2e-4), so in place it changes only weights close
    to 0 (measured: 100% of weights moved in fp32 with bf16 compute, 1.0% in bf16)."""
    dtype_default = ModelConfig().dtype
    mp_default = TrainStageConfig.model_fields["mixed_precision"].default
    assert (dtype_default, mp_default) == ("auto", "auto")
    weights = weights_dtype(dtype_default, "cuda", trainable=True, **GPU)
    compute = compute_precision(mp_default, "cuda", **GPU)
    assert (weights, compute) == (torch.float32, "bf16")
    assert _one_step(small_model_dir, examples, weights, compute) > 0.9

    # The previous default (auto = bf16 weights, stepped in place) loses the update.
    assert _one_step(small_model_dir, examples, torch.bfloat16, "no") < 0.02


def test_the_accelerator_on_a_cpu_machine(monkeypatch):
    """``posttrain.training.accelerator``: DeepSpeed is told its accelerator up front (its
    probe would print into ``posttrain run``'s stdout), a stage's precision replaces the
    previous stage's in the same process, ``None`` keeps it, and fp16 is refused."""
    import os

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert get_accelerator("no").mixed_precision == "no"
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert get_accelerator("bf16").mixed_precision == "bf16"
    assert get_accelerator().mixed_precision == "bf16"
    assert get_accelerator("auto").mixed_precision == "no"  # auto on a CPU: fp32
    with pytest.raises(PosttrainError, match="fp16"):
        get_accelerator("fp16")
