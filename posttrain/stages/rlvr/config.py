"""The RLVR stage's recipe section. Defaults follow OLMo 2 1B Instruct's GRPO runs
(open-instruct ``docs/olmo2.md``, ``grpo_fast.py``: beta 0.01 with the k3 estimator, lr 5e-7
constant, 48 prompts x 16 samples per step, responses up to 2,048 tokens, temperature 1.0,
one optimizer pass per rollout batch). PPO settings (``algorithm: ppo``) live in the
``ppo`` subsection; their defaults follow Tülu 3 8B's RLVR (open-instruct
``docs/tulu3.md``, ``ppo_vllm_thread_ray_gtrl.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from posttrain.recipe.schema import DataSource, ModelFromStage, Strict, TrainStageConfig


class VLLMSettings(Strict):
    """The vLLM engine (``engine: vllm``) or server (``engine: vllm_server``)."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Share of each GPU's memory vLLM may take (the trainer shares the device)."""
    kv_cache_gb: int = Field(1, gt=0)
    """KV-cache size in whole GiB on a CPU (vLLM's ``VLLM_CPU_KVCACHE_SPACE`` takes GiB as
    an integer)."""
    sleep_between_rollouts: bool = True
    """On a GPU, free vLLM's memory (sleep mode) while the trainer steps."""
    server_url: str | None = None
    """``engine: vllm_server``: address of a running ``python -m
    posttrain.rollout.vllm_server serve MODEL`` (``http://HOST:PORT``), serving the stage's
    input model; the main process pushes the weights to it after each step."""


class PPOSettings(Strict):
    """PPO with a value model (``algorithm: ppo``, Tülu 3's RLVR; ``stages/rlvr/ppo.py``).
    Defaults: Tülu 3 8B (open-instruct ``ppo_vllm_thread_ray_gtrl.py``). Its other
    settings are the stage's own fields: ``learning_rate`` 3e-7, ``beta`` 0.05 with
    ``kl_estimator: k1``, ``num_iterations`` 4 (PPO epochs), ``clip_low``/``clip_high``
    0.2, ``temperature`` 1.0, ``max_new_tokens`` 2048, ``reward_multiplier`` 10,
    ``non_stop_penalty`` -10."""

    value_model: str | ModelFromStage | None = None
    """Where the value model starts: a reward model (a hub id or ``save_pretrained`` folder
    of an ``AutoModelForSequenceClassification``, e.g. ``allenai/Llama-3.1-Tulu-3-8B-RM``),
    an earlier ``rm`` stage of the recipe (``{from_stage: rm}``), or null for the policy's
    own weights with a new scalar head (Tülu 3 8B and OLMo 2 7B started it from their
    reward model)."""
    value_learning_rate: float | None = Field(None, gt=0)
    """The value model's peak learning rate, for its own AdamW (same schedule and warmup as
    the policy's); null uses the policy's (Tülu 3 8B: one learning rate, 3e-7, for both)."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss (Tülu 3: 0.1)."""
    value_clip: float | None = Field(0.2, gt=0)
    """Clip the new value to within this of the old one, as PPO does (Tülu 3: 0.2); null
    disables it."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount (Tülu 3: 1)."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE's lambda (Tülu 3: 0.95)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's response tokens."""
    kl_in_reward: bool = True
    """Put -beta * KL on every token's reward (Tülu 3: beta 0.05, k1), computed once from the
    rollout; false adds beta * KL to the policy loss instead, as GRPO."""

    @field_validator("value_model")
    @classmethod
    def _existing_folder(cls, v):
        import os

        # A hub id cannot start with "/" or "."; such a value is a folder and must exist.
        if isinstance(v, str) and (os.path.isabs(v) or v.startswith(".")) and not os.path.isdir(v):
            raise ValueError(f"no such folder: {v}")
        return v


class RLVRConfig(TrainStageConfig):
    """Reinforcement learning with verifiable rewards: sample responses to prompts with a
    rollout engine, score them with the verifiers, optimise the policy (GRPO or PPO).
    ``train_data`` holds prompt rows (``messages`` or ``prompt``, ``dataset``,
    ``ground_truth``). One RL step samples ``prompts_per_step`` prompts x
    ``samples_per_prompt`` responses and makes ``num_iterations x num_minibatches``
    optimizer steps on them. The run lasts ``max_steps`` RL steps, or, without it,
    ``num_epochs`` passes over the prompts (``ceil(num_epochs x prompts /
    prompts_per_step)`` steps; OLMo 2 1B: 2,000,000 episodes / (48 x 16) = 2,604 steps)."""

    algorithm: Literal["grpo", "ppo"] = "grpo"
    """``grpo``: group-relative advantages, no value model (OLMo 2 1B). ``ppo``: a value
    model and GAE (Tülu 3 8B, OLMo 2 7B); see ``ppo``."""
    engine: Literal["hf", "vllm", "vllm_server"] = "hf"
    """Rollout engine: ``hf`` (transformers generate; the CPU default, samples from the
    trainer's own model object, so weight sync costs nothing), ``vllm`` (vLLM in its own
    process, synced after each update; the fast choice on GPUs) or ``vllm_server`` (a vLLM
    server at ``vllm.server_url``, e.g. on another node, weights pushed over HTTP)."""
    vllm: VLLMSettings = VLLMSettings()
    """vLLM engine settings."""
    generation_batch_size: int = Field(64, gt=0)
    """``hf`` engine: sequences per ``generate`` call (a step's prompts x samples are
    generated in chunks of this many rows)."""

    train_data: list[DataSource]
    """Prompt rows: ``messages`` (the prompt turns) or ``prompt``, ``dataset`` (the
    verifier name, or a list) and ``ground_truth``, as open-instruct's RLVR data sets
    (``allenai/RLVR-GSM-MATH-IF-Mixed-Constraints``). Mixed like SFT data (``amount``) and
    shuffled with the seed."""
    eval_data: list[DataSource] = []
    """Not used by RLVR (its held-out prompts are ``eval_prompts``); must stay empty."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Not used by RLVR (an optimizer step is one minibatch: ``num_minibatches``); must
    stay 1."""
    compile: bool = False
    """Not supported by RLVR yet (response lengths change every step); must stay false."""
    learning_rate: float = Field(5e-7, gt=0)
    """Peak learning rate of AdamW (OLMo 2 1B GRPO: 5e-7; Tülu 3 8B PPO: 3e-7). Tiny
    models need far more (the tiny recipe uses 2e-5)."""
    lr_scheduler: Literal["linear", "constant", "cosine"] = "constant"
    """Learning-rate shape after warmup (OLMo 2 1B GRPO: constant)."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of optimizer steps over which the learning rate rises from 0."""
    max_length: int = Field(2048, gt=1)
    """Longest prompt in tokens; longer prompts are dropped and counted (OLMo 2:
    max_prompt_token_length 2048)."""
    max_new_tokens: int = Field(2048, gt=0)
    """Longest response in tokens (OLMo 2 and Tülu 3: response_length 2048)."""
    prompts_per_step: int = Field(48, gt=0)
    """Distinct prompts sampled per RL step, over all processes (OLMo 2 1B:
    num_unique_prompts_rollout 48)."""
    samples_per_prompt: int = Field(16, gt=0)
    """Responses per prompt, the GRPO group (OLMo 2 1B: num_samples_per_prompt_rollout 16)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (OLMo 2 and Tülu 3: 1.0). The trainer's log-probs use the same
    temperature, so ratios compare like with like."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling cut-off (1 = off). With it on, the engine's log-probs are of the
    truncated distribution, which the trainer's full softmax does not reproduce."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling (0 = off); same caveat as ``top_p``."""
    num_iterations: int = Field(1, gt=0)
    """Optimizer passes over each rollout batch (GRPO's mu; PPO epochs; OLMo 2 1B:
    num_epochs 1, Tülu 3 PPO: 4). Above 1 the importance ratio is against the sampling
    policy's log-probs, computed once before the first update."""
    num_minibatches: int = Field(1, gt=0)
    """Optimizer steps per pass: the rollout batch is split into this many minibatches
    (OLMo 2 1B: num_mini_batches 1)."""
    per_device_batch_size: int = Field(8, gt=0)
    """Sequences per forward/backward pass on each device (micro-batch); a minibatch's
    micro-batches are accumulated into one optimizer step."""
    share_prompts: Literal["auto", "on", "off"] = "auto"
    """Compute each prompt once for the responses to it that share a micro-batch (one row:
    the prompt, then every response attending to it and to itself: the same log-probs and
    gradients). ``auto`` does it when the estimated FLOPs are lower (short responses;
    the dense attention mask grows with the square of the row), ``on`` always, ``off``
    never."""
    logging_steps: int = Field(1, gt=0)
    """Write metrics every N RL steps (each RL step is long: every step by default)."""
    max_steps: int | None = Field(None, gt=0)
    """RL steps to run (each: one rollout batch, then its optimizer steps); overrides
    ``num_epochs``."""
    num_epochs: float = Field(1.0, gt=0)
    """Without ``max_steps``: passes over the prompts, rounded up to whole RL steps."""
    eval_steps: int | None = Field(None, gt=0)
    """Run the in-loop eval on ``eval_prompts`` every N RL steps (and at the end)
    (OLMo 2: local_eval_every 5)."""
    save_steps: int | None = Field(None, gt=0)
    """Write a resumable checkpoint every N RL steps (one is always written at the end;
    OLMo 2: save_freq 200)."""

    reward_multiplier: float = Field(10.0, gt=0)
    """Verifier score (in [0, 1]) times this is the reward (Tülu 3 and OLMo 2: 10)."""
    verifier_weights: dict[str, float] = {}
    """Weight of each verifier where a row names several (default 1 each; the row's reward
    is the weighted mean of its verifiers' scores, times ``reward_multiplier``)."""
    non_stop_penalty: float | None = None
    """When set, a response that hit ``max_new_tokens`` without stopping gets this reward
    instead of its verifier reward (Tülu 3 8B: -10; OLMo 2 1B: non_stop_penalty with value
    0)."""
    mask_truncated: bool = False
    """Leave responses that hit the length limit out of the loss (DAPO's overlong
    filtering)."""

    advantage: str = "grpo"
    """Advantage estimator for GRPO (``grpo``, ``rloo``; registry
    ``posttrain.rl.advantages``). PPO always uses ``gae``."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """``grpo``: divide (reward - group mean) by the group's std (original GRPO; OLMo 2's
    grpo_fast), the batch's std, or nothing (Dr. GRPO recommends none)."""
    policy_loss: str = "clipped"
    """Policy loss (registry ``posttrain.losses.policy``): ``clipped`` (PPO's clipped
    surrogate, token ratios), ``gspo`` (sequence-level ratio), ``cispo`` (clipped,
    detached ratio times the log-prob)."""
    clip_low: float = Field(0.2, ge=0)
    """Lower clip: the ratio is kept above 1 - clip_low (PPO/GRPO: 0.2)."""
    clip_high: float = Field(0.2, ge=0)
    """Upper clip: the ratio is kept below 1 + clip_high (DAPO's clip-higher: 0.28)."""
    dual_clip: float | None = Field(None, gt=1)
    """``clipped``/``gspo``: cap a negative-advantage token's loss at ``-A x dual_clip``
    (dual-clip PPO; verl's clip_ratio_c 3). Null: off."""
    cispo_max_weight: float = Field(5.0, gt=0)
    """``cispo``: cap of the detached ratio (ScaleRL's eps_max; TRL's recommendation 5)."""
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """How token losses become the step's loss: ``token_mean`` over every response token
    of the optimizer step (DAPO; OLMo 2's grpo_fast), ``seq_mean_token_mean`` (each
    response's token mean, averaged; original GRPO), ``seq_mean_token_sum_norm`` (token
    sums divided by ``max_new_tokens``, averaged; Dr. GRPO)."""
    beta: float = Field(0.01, ge=0)
    """KL coefficient to the frozen reference (the stage's input model), in the loss. 0
    loads no reference (OLMo 2 1B GRPO: 0.01; Tülu 3 8B PPO: 0.05). With LoRA the
    reference is the policy with its adapter disabled (no second copy)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (OLMo 2: kl_estimator 3, i.e. k3)."""

    rollout_correction: Literal["none", "tis", "mask_token", "mask_sequence"] = "none"
    """Correct for the engine's log-probs differing from the trainer's: ``tis``
    multiplies each token's loss by min(trainer/engine probability ratio, ``tis_cap``);
    ``mask_token``/``mask_sequence`` drop tokens/responses whose ratio leaves
    [1/``tis_cap``, ``tis_cap``]. The mismatch is logged every step either way."""
    tis_cap: float = Field(2.0, gt=1)
    """Cap of the truncated importance weight, and the masking bound (the TIS paper's C = 2)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no signal) and sample more prompts until
    the batch is full (DAPO); the fraction dropped is logged."""
    max_sampling_rounds: int = Field(4, gt=0)
    """With dynamic sampling: give up filling the batch after this many rounds and train
    on what was kept."""

    eval_prompts: list[DataSource] = []
    """Held-out prompts for the in-loop eval every ``eval_steps`` (and at the end): greedy
    accuracy per verifier, and pass@k from ``eval_samples`` samples. Same row format as
    ``train_data``."""
    eval_samples: int = Field(0, ge=0)
    """Samples per eval prompt at ``temperature`` for pass@k (0: greedy only)."""
    eval_limit: int | None = Field(None, gt=0)
    """Use only the first N eval prompts (in file order, as ``posttrain eval --limit``)."""
    eval_max_new_tokens: int | None = Field(None, gt=0)
    """Response length of the in-loop eval; null: ``max_new_tokens``."""
    eval_at_start: bool = True
    """Also evaluate the input model before the first step (logged at step 0), so the
    curve starts where the stage starts. Skipped on resume."""
    verifier_workers: int | None = Field(None, ge=0)
    """Verifier worker processes (default: this machine's cores, shared by its ranks)."""
    verifier_timeout: float = Field(10.0, gt=0)
    """Seconds a verifier call may take before its response scores 0."""
    code_sandbox: Literal["bwrap", "rlimits_only"] = "bwrap"
    """How the ``code`` verifier runs model-written code: ``bwrap`` (bubblewrap sandbox;
    the run stops with a message before training if it cannot start) or ``rlimits_only``
    (resource limits alone: only for trusted data)."""
    reasoning_format: bool = True
    """Verifiers judge the final answer of ``<think>...</think>`` responses (and inside
    ``<answer>`` tags); false where such tags are literal content."""

    ppo: PPOSettings = PPOSettings()
    """PPO settings (``algorithm: ppo``)."""

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, v: str) -> str:
        from posttrain.rl.advantages import advantage_names

        if v not in advantage_names():
            raise ValueError(f"unknown advantage estimator {v!r} (known: {', '.join(advantage_names())})")
        return v

    @field_validator("policy_loss")
    @classmethod
    def _known_policy_loss(cls, v: str) -> str:
        from posttrain.losses.policy import policy_loss_names

        if v not in policy_loss_names():
            raise ValueError(f"unknown policy loss {v!r} (known: {', '.join(policy_loss_names())})")
        return v

    @field_validator("algorithm")
    @classmethod
    def _available_algorithm(cls, v: str) -> str:
        from posttrain.stages.rlvr.algorithm import algorithm_names

        if v not in algorithm_names():
            raise ValueError(f"algorithm {v!r} is not available yet (available: {', '.join(algorithm_names())})")
        return v

    @field_validator("gradient_accumulation_steps")
    @classmethod
    def _no_accumulation_field(cls, v: int) -> int:
        if v != 1:
            raise ValueError("not used by RLVR: an optimizer step is one minibatch of the rollout batch "
                             "(set num_minibatches; per_device_batch_size sizes the micro-batches)")
        return v

    @field_validator("eval_data")
    @classmethod
    def _no_eval_data(cls, v: list) -> list:
        if v:
            raise ValueError("not used by RLVR: give held-out prompts as eval_prompts")
        return v

    @field_validator("compile")
    @classmethod
    def _no_compile(cls, v: bool) -> bool:
        if v:
            raise ValueError("not supported by RLVR yet (response lengths change every step)")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        from posttrain.rl.advantages import get_advantage

        if self.algorithm == "grpo":
            spec = get_advantage(self.advantage)
            if spec.needs_values or spec.token_rewards:
                raise ValueError(f"advantage: {self.advantage!r} needs a value model (algorithm: ppo); GRPO "
                                 "takes grpo or rloo")
            if self.samples_per_prompt < 2:
                raise ValueError("samples_per_prompt: GRPO/RLOO need at least 2 samples per prompt (a group)")
        if self.dynamic_sampling and self.samples_per_prompt < 2:
            raise ValueError("dynamic_sampling: needs groups of at least 2 samples per prompt")
        if self.engine == "vllm_server" and not self.vllm.server_url:
            raise ValueError("vllm.server_url: engine vllm_server needs the server's address (http://HOST:PORT of "
                             "`python -m posttrain.rollout.vllm_server serve MODEL`)")
        return self
