"""The hidden-state term of DistillationTrainer against a reference written from the papers' definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from test_trainer import NO_DROPOUT, a_batch, make_args, make_trainer

from hf_distill import DistillationArguments, DistillationTrainer, load_distillation_config


def reference_hidden(teacher, student, batch, layer_map, kind):
    """Loops over examples and real tokens only; TinyBERT/PKD MSE (embeddings + mapped layers) or DistilBERT cosine."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t = teacher.eval()(**inputs, output_hidden_states=True).hidden_states
        s = student.train()(**inputs, output_hidden_states=True).hidden_states
    lengths = batch["attention_mask"].sum(1).tolist()
    if kind == "cosine":
        per_example = [(1 - F.cosine_similarity(s[-1][b, :n], t[-1][b, :n], dim=-1)).mean() for b, n in
                       enumerate(lengths)]  # fmt: skip
        return torch.stack(per_example).mean()
    pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(layer_map)]
    per_layer = []
    for si, ti in pairs:
        per_example = [((s[si][b, :n] - t[ti][b, :n]) ** 2).mean() for b, n in enumerate(lengths)]
        per_layer.append(torch.stack(per_example).mean())
    return torch.stack(per_layer).mean()


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_term_matches_reference_and_enters_the_total(tmp_path, kind):
    teacher, student = tiny_bert(4, seed=1, **NO_DROPOUT), tiny_bert(2, seed=2, **NO_DROPOUT)
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 3], alpha=0.3, beta=0.6, gamma=0.0,
                           hidden_weight=2.5, hidden_loss=kind)  # fmt: skip
    batch = a_batch()
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("train")
    expected_hidden = reference_hidden(teacher, student, batch, [1, 3], kind)
    assert expected_hidden.item() > 1e-3
    assert means["loss_hidden"] == pytest.approx(expected_hidden.item(), rel=1e-4)
    expected = 0.3 * means["loss_ce"] + 0.6 * means["loss_kd"] + 2.5 * expected_hidden.item()
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_hidden_term_trains_is_logged_and_recorded(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, gamma=0.0, hidden_weight=1.0, max_steps=4, logging_steps=2)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss_hidden" in h]
    assert len(logged) == 2 and all(h["loss_hidden"] > 0 for h in logged)
    assert "eval_loss_hidden" in trainer.evaluate()
    trainer.save_model()
    record = load_distillation_config(trainer.args.output_dir)
    assert (record.hidden_weight, record.hidden_loss) == (1.0, "mse")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "+ 1 * L_hidden[mse]" in card and "TinyBERT/PKD" in card


def test_hidden_weight_zero_keeps_no_hidden_states(tmp_path, teacher, student, monkeypatch):
    seen = []
    for model in (teacher, student):
        model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("output_hidden_states")), with_kwargs=True)
    trainer = make_trainer(tmp_path, teacher, student, hidden_weight=0.0)
    trainer.model.train()
    trainer.compute_loss(trainer.model, a_batch())
    assert seen and not any(seen)
    assert "loss_hidden" not in trainer._pop_term_means("train")


def test_different_widths_learn_a_projection_for_mse_and_are_refused_for_cosine(tmp_path):
    """MSE goes through TinyBERT's learned W_e / W_h (tests/test_hidden_projection.py); cosine needs equal widths."""
    teacher, student = tiny_bert(4, hidden=32, seed=1), tiny_bert(2, hidden=16, heads=2, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, hidden_weight=1.0))
    assert trainer.hidden_projection.hidden.weight.shape == (32, 16)
    args = make_args(tmp_path, hidden_weight=1.0, hidden_loss="cosine")
    with pytest.raises(ValueError, match=r"hidden_loss='cosine' .*hidden_size is 16 and the teacher's 32"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_weight=-1.0), r"`hidden_weight` must be a finite number >= 0, got -1.0"),
        (dict(hidden_loss="l1"), r"`hidden_loss` must be one of mse, cosine, got 'l1'"),
        (dict(gamma=0.0, hidden_weight=1.0, teacher_cache_dir="c"), r"hidden_weight=1.0 needs the teacher's hidden"),
        # every term the cache cannot serve is named at once, with the recipe that set them and the one that fits
        (dict(recipe="recommended", teacher_cache_dir="c"),
         r"gamma=1.0 needs the teacher's attention maps; relation_weight=1.0 needs the teacher's projections with "
         r"recipe='recommended'.*Set gamma=0 and relation_weight=0 to use the cache \(recipe='logits'"),
    ],
)
def test_bad_hidden_settings_fail_in_post_init(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), **overrides)


def test_predictions_hold_the_logits_not_the_hidden_states(tmp_path):
    """The hidden states the term needs are not gathered into evaluation predictions (memory, concatenation)."""
    trainer = make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), hidden_weight=1.0)
    output = trainer.predict(trainer.eval_dataset)
    assert isinstance(output.predictions, np.ndarray)
    assert output.predictions.shape == (len(trainer.eval_dataset), 2)
    assert "test_loss_hidden" in output.metrics
