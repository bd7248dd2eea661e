"""Scalar-head models on the real tiny OLMo-2: a new head from a causal LM, the score read
at each row's last real token whatever the padding, per-token values, and a reward-model
folder whose head is kept."""

import math

import pytest
import torch

from posttrain.policy import pad_sequences
from posttrain.rl.value_model import is_scalar_model_folder, load_scalar_model, sequence_scores, token_values


@pytest.fixture(scope="module")
def scalar(tiny_model_dir):
    torch.manual_seed(0)
    return load_scalar_model(tiny_model_dir, dtype="float32", device="cpu")


def test_new_head_from_a_causal_lm(scalar, tiny_model_dir):
    assert not is_scalar_model_folder(tiny_model_dir)
    model = scalar.model
    assert type(model).__name__ == "Olmo2ForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == scalar.tokenizer.pad_token_id != scalar.tokenizer.eos_token_id
    hidden = model.config.hidden_size
    # 256 weights drawn from normal(0, 1/sqrt(257)): their std is within 15% of 0.0624
    assert model.score.weight.std().item() == pytest.approx(1 / math.sqrt(hidden + 1), rel=0.15)


def test_score_is_read_at_the_last_real_token(scalar):
    model = scalar.model.eval()
    rows = [[5, 6, 7, 8, 9, 10], [5, 6, 7], [11, 12, 13, 14]]
    ids, mask = pad_sequences(rows, scalar.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        batch = sequence_scores(model, ids, mask)
        alone = [sequence_scores(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)).item()
                 for r in rows]
        values = token_values(model, ids, mask)
    assert batch.tolist() == pytest.approx(alone, abs=1e-5)
    # the per-token values at each row's last real token are its sequence score
    last = torch.tensor([len(r) - 1 for r in rows])
    assert values[torch.arange(3), last].tolist() == pytest.approx(alone, abs=1e-5)
    assert values.shape == ids.shape


def test_a_reward_model_folder_keeps_its_head(scalar, tmp_path):
    from transformers import AutoModelForSequenceClassification

    scalar.save(tmp_path / "rm")
    assert is_scalar_model_folder(tmp_path / "rm")
    again = load_scalar_model(tmp_path / "rm", dtype="float32", device="cpu")
    assert torch.equal(again.model.score.weight, scalar.model.score.weight)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert torch.equal(plain.score.weight, scalar.model.score.weight)
