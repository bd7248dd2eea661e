"""GRPO on a fixed rollout batch, wired as the ``rlvr`` stage runner wires it (prompts, the
verifier pool, the rollout source, the GRPO algorithm, its loss and collate, the online
trainer), run on one process or under a multi-process launch. Two things differ from the
runner, and are what a multi-process run needs:

- the rollout engine returns the same four responses to a prompt whatever the weights or
  seed (a fixed rollout batch: sampling on two processes cannot reproduce one process's
  random draws), and records the weights every sync hands it;
- the weight sync is ``posttrain.training.weight_sync.FullWeightSync`` (full weights
  gathered from the shards to every process's engine), and the old log-probs of the
  step's second pass come from the prepared policy module (``models["policy"]``), which
  a sharded run needs.

    python grpo_driver.py OUT MODEL_DIR PROMPTS.jsonl STEPS

writes ``OUT/rlvr/metrics.jsonl``, ``OUT/rlvr/model`` and, per process,
``OUT/synced_<rank>.safetensors`` (the last weights its engine received).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

RESPONSES = ["#### {gt}", "#### {wrong}", "So the answer is {gt}.", "I do not know."]


class FixedEngine:
    """Four fixed responses per prompt (two right, two wrong for the gsm8k verifier)."""

    kind = "fixed"
    shares_weights = False

    def __init__(self, tokenizer, prompts):
        self.tokenizer = tokenizer
        self.by_ids = {tuple(p.token_ids): p for p in prompts}
        self.received: dict[str, torch.Tensor] = {}

    def generate(self, prompt_token_ids, n, sampling):
        from posttrain.rollout import Rollouts

        assert n == len(RESPONSES)
        index, tokens, texts = [], [], []
        for i, ids in enumerate(prompt_token_ids):
            gt = str(self.by_ids[tuple(ids)].ground_truth)
            for template in RESPONSES:
                text = template.format(gt=gt, wrong=int(gt) + 1)
                index.append(i)
                tokens.append(self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id])
                texts.append(text)
        return Rollouts(prompt_index=index, token_ids=tokens, texts=texts,
                        logprobs=[[0.0] * len(t) for t in tokens], finish_reasons=["stop"] * len(tokens))

    def update_weights(self, named_tensors):
        self.received = {k: v.detach().to("cpu", copy=True) for k, v in named_tensors}

    def sleep(self):
        pass

    def wake(self):
        pass

    def close(self):
        pass


def main(out: Path, model_dir: str, prompts_file: str, steps: int) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from posttrain.data.prompts import build_prompts
    from posttrain.metrics import MetricsWriter
    from posttrain.policy import prepare_tokenizer
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.rlvr.algorithm import get_algorithm
    from posttrain.stages.rlvr.batch import collate_samples
    from posttrain.stages.rlvr.loss import sample_logprobs
    from posttrain.stages.rlvr.runner import model_dims
    from posttrain.stages.rlvr.source import RolloutSource
    from posttrain.training import OnlineTrainer, get_accelerator
    from posttrain.training.weight_sync import FullWeightSync
    from posttrain.verifiers.scoring import Scorer

    stage = {"type": "rlvr", "train_data": [{"path": prompts_file}], "max_steps": steps, "prompts_per_step": 4,
             "samples_per_prompt": 4, "max_new_tokens": 16, "max_length": 64, "learning_rate": 1e-3,
             "beta": 0.01, "num_iterations": 2, "per_device_batch_size": 4, "verifier_workers": 1,
             "logging_steps": 1, "temperature": 1.0}
    recipe = validate_recipe({"output_dir": str(out), "seed": 0, "model": {"name_or_path": model_dir},
                              "stages": {"rlvr": stage}})
    cfg = recipe.stages["rlvr"]
    acc = get_accelerator()
    ctx = StageContext(name="rlvr", config=cfg, recipe=recipe, input_model=model_dir, input_revision=None,
                       stage_dir=out / "rlvr", metrics=MetricsWriter(out / "rlvr" / "metrics.jsonl",
                                                                     enabled=acc.is_main_process),
                       type="rlvr", run_dir=out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prepare_tokenizer(tokenizer)
    prompts, _ = build_prompts(cfg.train_data, tokenizer, cfg.max_length, ctx.seed, what="rlvr.train_data")
    scorer = Scorer(workers=1, timeout=30).start()
    try:
        policy = ctx.load_policy()
        frozen = {"reference": ctx.load_policy(trainable=False).model}
        engine = FixedEngine(tokenizer, prompts)
        gather = (lambda t: acc.gather(t.to(acc.device)).cpu()) if acc.num_processes > 1 else None
        algorithm = get_algorithm("grpo")(cfg, gather=gather)
        kw = dict(pad_id=tokenizer.pad_token_id, temperature=cfg.temperature, batch_size=cfg.per_device_batch_size,
                  share=cfg.share_prompts, dims=model_dims(policy.model))
        source = RolloutSource(
            cfg, prompts, engine, scorer, algorithm, seed=ctx.seed, stop_token_ids=(tokenizer.eos_token_id,),
            reference=lambda models, p, r: sample_logprobs(models["reference"], p, r, **kw),
            old_logprobs=lambda models, p, r: sample_logprobs(models["policy"], p, r, **kw),
            verifier_names=["gsm8k"], rank=acc.process_index, world=acc.num_processes)
        sync = FullWeightSync(engine, "policy", every_process=True)
        trainer = OnlineTrainer(
            ctx, algorithm.online_models(policy), source,
            partial(collate_samples, pad_id=tokenizer.pad_token_id, correction=cfg.rollout_correction,
                    tis_cap=cfg.tis_cap, share=cfg.share_prompts, dims=model_dims(policy.model)),
            steps=cfg.max_steps, micro_batch_size=cfg.per_device_batch_size, passes=cfg.num_iterations,
            minibatches=cfg.num_minibatches, frozen=frozen, shuffle=False, after_update=sync.after_update,
            after_resume=sync.after_resume)
        sync.bind(trainer.engine)
        trainer.train()
        save_file(engine.received, str(out / f"synced_{acc.process_index}.safetensors"))
    finally:
        scorer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
