"""TinyBERT's attention term (`attention_loss="score_mse"`) in the trainer, against scores computed by hand."""

import math

import pytest
import torch
from conftest import tiny_bert
from test_trainer import NO_DROPOUT, a_batch, make_args, make_trainer

from hf_distill import DistillationTrainer


def scores_by_hand(model, batch, layer):
    """`Q K^T / sqrt(d)` per head of one BERT layer, from that layer's input and its own projection weights."""
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[layer]  # fmt: skip
        attention = model.bert.encoder.layer[layer].attention.self
        heads = model.config.num_attention_heads
        size = model.config.hidden_size // heads
        batch_size, length, _ = states.shape
        q = attention.query(states).view(batch_size, length, heads, size).transpose(1, 2)
        k = attention.key(states).view(batch_size, length, heads, size).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(size)


def test_score_mse_term_matches_hand_computed_scores(tmp_path):
    teacher, student = tiny_bert(4, seed=1, **NO_DROPOUT), tiny_bert(2, seed=2, **NO_DROPOUT)
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 3], alpha=0.0, beta=0.0, gamma=1.0,
                           attention_loss="score_mse")  # fmt: skip
    batch = a_batch()
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    per_layer = []
    for s_layer, t_layer in enumerate([1, 3]):
        s, t = scores_by_hand(student, batch, s_layer), scores_by_hand(teacher, batch, t_layer)
        per_example = [((s[b, :, :n, :n] - t[b, :, :n, :n]) ** 2).mean() for b, n in enumerate(lengths)]
        per_layer.append(torch.stack(per_example).mean())
    expected = torch.stack(per_layer).mean()
    assert expected.item() > 1e-2
    assert trainer._pop_term_means("train")["loss_attn"] == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_score_mse_trains_the_student(tmp_path, teacher, student):
    before = [p.detach().clone() for p in student.parameters()]
    trainer = make_trainer(tmp_path, teacher, student, attention_loss="score_mse", max_steps=2, logging_steps=1)
    trainer.train()
    assert all(h["loss_attn"] > 0 for h in trainer.state.log_history if "loss_attn" in h)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_score_mse_needs_equal_head_counts(tmp_path):
    teacher, student = tiny_bert(4, heads=4, seed=1), tiny_bert(2, heads=2, seed=2)
    message = r"attention_loss='score_mse' compares heads one to one.*attention_loss='mse'"
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, attention_loss="score_mse"))
