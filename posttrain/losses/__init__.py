"""Losses as pure functions of logits / log-probs and labels: SFT (``sft.py``), the DPO
family (``dpo.py``). Each returns a per-item sum and an item count so the training loop
can apply the ``mean`` or ``sum`` reduction exactly across gradient accumulation."""
