"""The step engine on two CPU processes (gloo), under DDP, FSDP2 (torch's ``fully_shard``,
through accelerate's own FSDP2 preparation with ``recipes/accelerate/fsdp2.yaml``) and
DeepSpeed ZeRO-3 (its CPU accelerator, ``recipes/accelerate/deepspeed_zero3.yaml``; run
when DeepSpeed is installed): the optimizer steps the prepared (wrapped or sharded)
parameters, the fast log-prob path goes through the wrapper's forward and still applies
the LM head to the requested positions only, gradient clipping sees the global norm, and
one clipped step gives the weights one process gets (``engine_checks.py``)."""

from __future__ import annotations

import json

import pytest

from dist_launch import ROOT, launch


@pytest.mark.timeout(600)
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml", "deepspeed_zero3.yaml"])
def test_engine_under_a_wrapper_matches_one_process(tmp_path, small_model_dir, config):
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    launch(config, 2, [ROOT / "tests/distributed/engine_checks.py", tmp_path, small_model_dir], tmp_path / "cache",
           module=False)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rep in reports:
        assert rep["world"] == 2
        if config == "fsdp2.yaml":
            assert rep["sharded"] and rep["module_type"] == "FSDPLogprobsModule"
            assert rep["param_types"] == ["DTensor"] and rep["optimizer_holds_prepared"]  # it steps the shards
            assert rep["optimizer_numel"] < rep["model_numel"]
        elif config == "ddp.yaml":
            assert not rep["sharded"] and rep["module_type"] == "DistributedDataParallel"
            assert rep["optimizer_holds_prepared"] and rep["optimizer_numel"] == rep["model_numel"]
        else:  # DeepSpeed's optimizer steps this process's flat fp32 partition
            assert rep["sharded"] and rep["module_type"] == "DeepSpeedEngine"
            assert rep["model_numel"] / 2 <= rep["optimizer_numel"] < rep["model_numel"] * 0.6
        assert rep["wraps_logprobs_module"]
        assert rep["head_rows"] == [7]  # 7 requested positions of 3 x 12, not 36 rows of logits
        assert rep["loss_sum"] == pytest.approx(rep["plain_loss_sum"], rel=1e-6)
        # the norm before clipping is the global one (one process's, as every process has
        # the same batch), not a shard's
        assert rep["grad_norm"] == pytest.approx(rep["plain_grad_norm"], rel=1e-5)
        assert rep["grad_norm"] > 0.5  # so clipping acted
        assert rep["same_names"]  # gathered weights carry the bare model's names
        # one AdamW step at lr 1e-3 moves weights by ~1e-3; the fused and plain AdamW
        # kernels differ in the last bits (measured 1.0e-5)
        assert rep["weights_max_diff"] < 1e-4
