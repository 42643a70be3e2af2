"""The self-relation term (MiniLM value relation, MiniLMv2 Q-Q/K-K/V-V) against loops written from the papers."""

import pytest
import torch
from conftest import tiny_bert
from test_trainer import NO_DROPOUT, a_batch, make_args, make_trainer

from hf_distill import DistillationTrainer, load_distillation_config


def projections_by_hand(model, batch, layer):
    """Query, key and value projections of one BERT layer, from its input hidden states."""
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[layer]  # fmt: skip
        attention = model.bert.encoder.layer[layer].attention.self
        return {"query": attention.query(states), "key": attention.key(states), "value": attention.value(states)}


def relation_kl_by_loops(student, teacher, heads, lengths):
    """Per example, head and real query row: KL(softmax(t_r t_r^T / sqrt d) || softmax(s_r s_r^T / sqrt d)) over
    the real keys; averaged over rows and heads, then over examples."""
    per_example = []
    for b, n in enumerate(lengths):
        rows = []
        for h in range(heads):
            s = student[b, :n].view(n, heads, -1)[:, h]
            t = teacher[b, :n].view(n, heads, -1)[:, h]
            log_s = (s @ s.T / s.shape[-1] ** 0.5).log_softmax(-1)
            log_t = (t @ t.T / t.shape[-1] ** 0.5).log_softmax(-1)
            rows.append((log_t.exp() * (log_t - log_s)).sum(-1))  # (n,) one KL per query row
        per_example.append(torch.cat(rows).mean())
    return torch.stack(per_example).mean()


@pytest.mark.parametrize(
    "relation_loss, teacher_shape, student_shape, relation_heads",
    [
        ("value", dict(hidden=32, heads=4), dict(hidden=32, heads=4), None),
        ("qkv", dict(hidden=32, heads=4), dict(hidden=16, heads=2), None),  # other width and head count
        ("qkv", dict(hidden=32, heads=4), dict(hidden=16, heads=2), 8),
    ],
)
def test_relation_term_matches_loops(tmp_path, relation_loss, teacher_shape, student_shape, relation_heads):
    teacher = tiny_bert(4, seed=1, **teacher_shape, **NO_DROPOUT)
    student = tiny_bert(2, seed=2, **student_shape, **NO_DROPOUT)
    relation = dict(relation_weight=1.0, relation_loss=relation_loss, relation_heads=relation_heads)
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 2], alpha=0.0, beta=0.0, gamma=0.0, **relation)
    batch = a_batch()
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    s, t = projections_by_hand(student, batch, 1), projections_by_hand(teacher, batch, 2)  # last layer, layer_map[-1]
    heads = relation_heads or teacher_shape["heads"]
    names = ["value"] if relation_loss == "value" else ["query", "key", "value"]
    expected = torch.stack([relation_kl_by_loops(s[n], t[n], heads, lengths) for n in names]).mean()
    assert expected.item() > 1e-3
    assert trainer._pop_term_means("train")["loss_relation"] == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_relation_term_trains_and_is_recorded(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, gamma=0.0, relation_weight=1.0, max_steps=2, logging_steps=1)
    trainer.train()
    assert all(h["loss_relation"] > 0 for h in trainer.state.log_history if "loss" in h)
    trainer.save_model()
    record = load_distillation_config(trainer.args.output_dir)
    assert (record.relation_weight, record.relation_loss, record.relation_heads) == (1.0, "qkv", None)
    assert "L_relation[qkv]" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    "overrides, student_shape, message",
    [
        (dict(relation_loss="value"), dict(hidden=32, heads=2), r"relation_loss='value' compares attention heads"),
        (dict(relation_heads=3), dict(hidden=32, heads=4), r"relation_heads=3 must divide the student's"),
    ],
)
def test_impossible_relation_settings_fail_at_start(tmp_path, overrides, student_shape, message):
    teacher, student = tiny_bert(4, hidden=32, heads=4, seed=1), tiny_bert(2, seed=2, **student_shape)
    args = make_args(tmp_path, relation_weight=1.0, **overrides)
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(relation_weight=-1.0), r"`relation_weight` must be a finite number >= 0"),
        (dict(relation_loss="attention"), r"`relation_loss` must be one of value, qkv, got 'attention'"),
        (dict(relation_heads=0), r"`relation_heads` must be a positive integer"),
    ],
)
def test_bad_relation_arguments_fail_in_post_init(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)
