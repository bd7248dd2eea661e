"""The typed recipe schema. Every field is documented where it is declared; the docstrings
are the reference for recipe authors (``posttrain schema`` prints them).

Stage-specific configs (``SFTConfig``, ``DPOConfig``, ...) subclass ``StageConfig`` (a
training stage: ``TrainStageConfig``) and live beside their runners in
``posttrain/stages/``; the loader picks the class by the section's ``type`` (default: its
key) through ``posttrain.stages.registry``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, docstrings are field docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(Strict):
    """Where the first stage's weights come from."""

    name_or_path: str = "tiny"
    """A hub id (``allenai/OLMo-2-0425-1B``), a local ``save_pretrained`` folder, or ``tiny``
    to create the project's tiny OLMo-2 from ``init_seed`` (nothing is downloaded)."""
    revision: str | None = None
    """Hub revision: a branch, tag or commit; OLMo names intermediate checkpoints
    ``stepN-tokensMB``."""
    init_seed: int = 0
    """Seed for the tiny model's random weights (``name_or_path: tiny`` only)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight and compute dtype; ``auto`` is bf16 on a GPU that has it, fp32 on a CPU."""

    @model_validator(mode="after")
    def _local_folder_exists(self):
        p = self.name_or_path
        # A hub id is "org/name" (or a bare legacy "name"); a deeper path is a folder.
        looks_local = p.startswith((".", "/", "~")) or p.count("/") >= 2 or Path(p).exists()
        if p != "tiny" and looks_local and not Path(p).expanduser().is_dir():
            raise ValueError(f"name_or_path: no model folder at {p!r}")
        return self


class LoraConfig(Strict):
    """Train a LoRA adapter instead of all weights (peft)."""

    r: int = Field(16, gt=0)
    """Rank of the update matrices."""
    alpha: int = Field(32, gt=0)
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Names of the linear layers that get adapters."""


class DataSource(Strict):
    """One dataset in a mixture: a file or hub dataset (``path``), or the data an earlier
    stage of the recipe wrote (``from_stage``)."""

    path: str | None = None
    """A local JSONL / JSON / Parquet / Arrow / CSV file, or a hub dataset name."""
    from_stage: str | None = None
    """Instead of ``path``: the name of an earlier, data-writing stage of this recipe (e.g. a
    ``pairs`` stage); the run reads ``<output_dir>/<name>/data.jsonl``, which that stage
    writes."""
    amount: float | int = 1.0
    """How much of it to use, as open-instruct's mixer: a number with a decimal point is a
    fraction of the dataset (above 1.0 upsamples), an integer is a row count."""
    split: str = "train"
    """Split to read from a hub dataset."""

    @field_validator("path")
    @classmethod
    def _local_file_exists(cls, v: str | None) -> str | None:
        if v is not None and v.endswith(LOCAL_DATA_SUFFIXES) and not Path(v).expanduser().exists():
            raise ValueError(f"no such data file: {v}")
        return v

    @field_validator("amount")
    @classmethod
    def _positive(cls, v):
        if v <= 0:
            raise ValueError("amount must be > 0 (a fraction like 0.5, or a row count like 1000)")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        # The pipeline fills ``path`` of a from_stage source with the file it resolves to
        # (``model_copy``, which does not validate); a recipe gives exactly one of them.
        if (self.path is None) == (self.from_stage is None):
            raise ValueError("give either path (a file or hub dataset) or from_stage (an earlier stage's data)")
        return self


class ModelFromStage(Strict):
    """A model folder written by an earlier stage of the same recipe, e.g. a PPO value model
    initialised from an ``rm`` stage: ``value_model: {from_stage: rm}``. A stage runner turns
    it into a path with ``ctx.resolve_model``."""

    from_stage: str
    """Name of an earlier stage that writes a model (a policy or, e.g., a reward model)."""


class StageConfig(Strict):
    """Fields of every stage section, training or not."""

    type: str | None = None
    """Which runner this stage is (``posttrain schema`` lists them); by default the stage's
    name, so ``sft: {...}`` runs ``sft``. Set it to run one runner twice under two names,
    e.g. ``rlvr_mixed: {type: rlvr, ...}`` then ``rlvr_math: {type: rlvr, ...}``."""
    seed: int | None = None
    """Seed for shuffling, dropout and sampling; defaults to the recipe's seed."""


class TrainStageConfig(StageConfig):
    """Hyperparameters every training stage shares."""

    train_data: list[DataSource]
    """The training mixture."""
    eval_data: list[DataSource] = []
    """Held-out data for the loss reported every ``eval_steps``."""
    learning_rate: float = Field(gt=0)
    """Peak learning rate of AdamW."""
    num_epochs: float = Field(1.0, gt=0)
    """Passes over the training mixture (fractions allowed)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps (overrides num_epochs)."""
    per_device_batch_size: int = Field(8, gt=0)
    """Examples per forward pass on each device."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Forward passes summed into one optimizer step."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of steps over which the learning rate rises linearly from 0."""
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    """Shape of the learning rate after warmup."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; null disables clipping."""
    max_length: int = Field(2048, gt=1)
    """Longest tokenized example, in tokens."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    compile: bool = False
    """``torch.compile`` the training forward and backward (fused kernels, less per-op
    overhead; SFT then pads rows to ``max_length``, so use it with ``packing``). The first
    steps pay the compilation. Numerics differ from eager in the last bits; the bitwise
    kill/resume guarantee is tested for eager runs."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter instead of all weights."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """Precision of the training forward and backward. ``auto``: bf16 on a GPU that has it,
    fp32 on a CPU. ``bf16``: bf16 compute under autocast (FSDP2: its mixed-precision
    policy) while the trained weights and optimizer state stay fp32, the master copy an
    update at a small learning rate needs (a bf16 weight near 0.02 cannot move by 5e-7).
    ``no``: compute in the weights' dtype. fp16 is not offered: without loss scaling its
    gradients underflow."""
    logging_steps: int = Field(10, gt=0)
    """Write training metrics every N optimizer steps."""
    eval_steps: int | None = Field(None, gt=0)
    """Compute held-out loss every N optimizer steps (and at the end) when eval_data is set."""
    save_steps: int | None = Field(None, gt=0)
    """Write a resumable checkpoint every N optimizer steps (one is always written at the end)."""
    keep_last: int = Field(2, gt=0)
    """Keep only the newest K step checkpoints."""
    skip_nonfinite_steps: bool = False
    """An optimizer step whose loss or gradient holds a NaN or Inf stops the stage before it
    is applied (the checkpoints stay clean); true skips such a step instead (weights
    unchanged, counted as ``nonfinite_skipped_steps`` in the metrics)."""


class MetricsConfig(Strict):
    """Where metrics go besides the per-stage JSONL file, which is always written."""

    tensorboard: bool = False
    """Also write TensorBoard event files (needs the ``tensorboard`` extra)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the ``wandb`` extra and a login)."""
    wandb_project: str = "posttrain"
    """W&B project name."""


class EvalConfig(Strict):
    """Verifier-scored greedy evaluation after every stage that trains the policy: a file
    of prompts (``data``), the standard suites (``suites``), or both."""

    data: str | None = None
    """JSONL with ``messages`` or ``prompt``, ``dataset`` and ``ground_truth`` per row."""
    max_new_tokens: int = Field(128, gt=0)
    """Generation budget per prompt of ``data`` (suites use their own)."""
    batch_size: int = Field(64, gt=0)
    """Prompts per generation batch."""
    limit: int | None = Field(None, gt=0)
    """Use only the first N rows (of ``data`` and of each suite)."""
    suites: list[str] = []
    """Standard evaluations, as ``posttrain eval --suite``: ``gsm8k``, ``math500``,
    ``ifeval``, each with its usual prompt and metric, read from the hub by its public
    name unless ``suite_data`` names a local copy."""
    suite_data: dict[str, str] = {}
    """Local copies of suite data sets, by suite name (``{gsm8k: test.jsonl}``)."""

    @field_validator("data")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().exists():
            raise ValueError(f"no such data file: {v}")
        return v

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, v: list[str]) -> list[str]:
        from posttrain.eval_suites.suites import SUITES

        for name in v:
            if name not in SUITES:
                raise ValueError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
        if len(set(v)) != len(v):
            raise ValueError("a suite is listed twice")
        return v

    @model_validator(mode="after")
    def _something_to_evaluate(self):
        if self.data is None and not self.suites:
            raise ValueError("give data (a prompt file), suites, or both")
        for name, path in self.suite_data.items():
            if name not in self.suites:
                raise ValueError(f"suite_data.{name}: not one of suites {self.suites}")
            if not Path(path).expanduser().exists():
                raise ValueError(f"suite_data.{name}: no such file: {path}")
        return self


class Recipe(Strict):
    """A whole post-training run: a model, its stages in order, and where results go."""

    output_dir: str
    """Run directory: one folder per stage, the resolved recipe, metrics."""
    seed: int = 0
    """Default seed of every stage."""
    model: ModelConfig = ModelConfig()
    """The starting weights."""
    # SerializeAsAny: dump each stage with its own class's fields (packing, beta, ...), not
    # only the base class's, so the run directory's recipe.yaml reproduces the run.
    stages: dict[str, SerializeAsAny[StageConfig]]
    """Stages by name, run in the order written. A stage's name is its folder in the run
    directory and, unless it sets ``type``, also its runner (``sft``, ``dpo``, ...). A
    stage that trains the policy starts from the previous such stage's output; a stage
    that writes data or another model (``pairs``, ``rm``) leaves the policy as it was."""
    eval: EvalConfig | None = None
    """Evaluate with the verifiers after each stage."""
    metrics: MetricsConfig = MetricsConfig()
    """Extra metric sinks."""
