"""posttrain: post-training (SFT, DPO, RLVR) for OLMo 2."""
__version__ = "0.1.0"
