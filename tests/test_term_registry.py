"""A loss term registered here, in the test file only, is validated, computed, logged, saved, checked on resume,
shown on the card and the plots, and watched by the non-finite guard, with no other file touched."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.artifacts import LOSS_FORMULA, load_distillation_config
from hf_distill.command.plots import _terms as plotted_terms
from hf_distill.guards import NonFiniteLossError
from hf_distill.resume import check_resume_settings
from hf_distill.terms import LossTerm, loss_formula, register_term, unregister_term

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def logit_mse(ctx) -> torch.Tensor:
    """Per-example mean squared difference of the logits, optionally of the logits minus their mean."""
    (student,), (teacher,) = ctx.student.logits, ctx.teacher.logits  # (B, C) each
    if ctx.settings("logit_mse_centre") == "mean":
        student, teacher = student - student.mean(-1, keepdim=True), teacher - teacher.mean(-1, keepdim=True)
    return (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (B,)


LOGIT_MSE = LossTerm(
    name="loss_logit_mse",
    weight="logit_mse_weight",
    symbol="L_logit_mse",
    label="logit MSE",
    defaults={"logit_mse_weight": 0.0, "logit_mse_centre": "none"},
    kinds={"logit_mse_centre": ("none", "mean")},
    needs=frozenset({"logits", "teacher_logits"}),
    compute=logit_mse,
    describe=lambda r: "L_logit_mse is the mean squared difference of the student's and the teacher's logits.",
)


@pytest.fixture
def registered():
    term = register_term(LOGIT_MSE)
    yield term
    unregister_term(term.name)


def make_trainer(tmp_path, weight: float = 1.0, teacher=None, **overrides) -> DistillationTrainer:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to="none",
                    logging_steps=1, save_steps=2, learning_rate=1e-3, alpha=0.0, beta=0.0, gamma=0.0,
                    term_settings={"logit_mse_weight": weight})  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(
        model=tiny_bert(num_layers=2, seed=2, **NO_DROPOUT),
        teacher_model=teacher if teacher is not None else tiny_bert(num_layers=4, seed=1, **NO_DROPOUT),
        args=DistillationArguments(**settings),
        train_dataset=Dataset.from_dict(random_rows(16, seed=3)),
        data_collator=pad_collator,
    )


def test_registered_term_settings_are_validated(registered, tmp_path):
    args = DistillationArguments(output_dir=str(tmp_path), alpha=0, beta=0, gamma=0,
                                 term_settings={"logit_mse_weight": 0.5})  # fmt: skip
    assert args.setting("logit_mse_centre") == "none"  # the term's default filled in
    assert args.term_weights()["loss_logit_mse"] == 0.5
    with pytest.raises(ValueError, match=r"`logit_mse_weight` must be a finite number >= 0, got -1"):
        DistillationArguments(output_dir=str(tmp_path), term_settings={"logit_mse_weight": -1})
    with pytest.raises(ValueError, match=r"`logit_mse_centre` must be one of none, mean, got 'median'"):
        DistillationArguments(output_dir=str(tmp_path), term_settings={"logit_mse_centre": "median"})
    with pytest.raises(ValueError, match=r"'logit_mse_wieght'.*logit_mse_weight, logit_mse_centre"):
        DistillationArguments(output_dir=str(tmp_path), term_settings={"logit_mse_wieght": 1.0})
    with pytest.raises(ValueError, match=r"`alpha`, .* and `logit_mse_weight` are all 0"):
        DistillationArguments(output_dir=str(tmp_path), alpha=0, beta=0, gamma=0)
    with pytest.raises(ValueError, match=r"already belong to another term"):
        register_term(LossTerm(name="loss_other", weight="logit_mse_weight", symbol="L", label="other",
                               defaults={"logit_mse_weight": 0.0}, compute=logit_mse))  # fmt: skip


def test_registered_term_is_computed_and_logged(registered, tmp_path):
    trainer = make_trainer(tmp_path)
    batch = pad_collator(list(Dataset.from_dict(random_rows(4, seed=5))))
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        student, teacher = trainer.model(**batch).logits, trainer.teacher_model(**batch).logits
    expected = ((student - teacher) ** 2).mean(dim=-1).mean()  # written here, not taken from the term
    assert expected.item() > 1e-3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert trainer._pop_term_means("train")["loss_logit_mse"] == pytest.approx(expected.item(), rel=1e-5)

    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["loss_logit_mse"] > 0 for entry in logs)
    assert ("loss_logit_mse", "logit MSE") in plotted_terms()


def test_registered_term_is_saved_shown_on_the_card_and_checked_on_resume(registered, tmp_path):
    trainer = make_trainer(tmp_path, weight=0.7)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((checkpoint / "distillation_config.json").read_text())
    assert saved["term_settings"] == {"logit_mse_weight": 0.7, "logit_mse_centre": "none"}
    assert saved["loss_formula"] == LOSS_FORMULA + " + logit_mse_weight * L_logit_mse"
    assert load_distillation_config(checkpoint).term_settings == saved["term_settings"]
    card = (checkpoint / "README.md").read_text()
    assert "+ 0.7 * L_logit_mse[none]" in card
    assert "L_logit_mse is the mean squared difference" in card

    check_resume_settings(checkpoint, trainer.distillation_record())  # the same settings resume
    changed = make_trainer(tmp_path, weight=0.5, max_steps=4)
    with pytest.raises(ValueError, match=r"logit_mse_weight: checkpoint 0.7, now 0.5"):
        changed.train(resume_from_checkpoint=str(checkpoint))
    changed = make_trainer(tmp_path, weight=0.7, max_steps=4, term_settings={"logit_mse_weight": 0.7,
                                                                            "logit_mse_centre": "mean"})  # fmt: skip
    with pytest.raises(ValueError, match=r"logit_mse_centre: checkpoint 'none', now 'mean'"):
        changed.train(resume_from_checkpoint=str(checkpoint))


def test_nonfinite_registered_term_stops_training_naming_it(registered, tmp_path):
    teacher, calls = tiny_bert(num_layers=4, seed=1, **NO_DROPOUT), {"n": 0}

    def nan_on_second_call(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            output.logits = torch.full_like(output.logits, math.nan)
        return output

    teacher.register_forward_hook(nan_on_second_call)
    trainer = make_trainer(tmp_path, teacher=teacher, max_steps=3, save_steps=100)
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*: loss_logit_mse=nan\. "):
        trainer.train()


def test_unregistering_restores_the_built_in_terms(tmp_path):
    register_term(LOGIT_MSE)
    assert loss_formula() != LOSS_FORMULA
    unregister_term(LOGIT_MSE.name)
    assert loss_formula() == LOSS_FORMULA
    assert "term_settings" not in DistillationArguments(output_dir=str(tmp_path)).distillation_settings()
    with pytest.raises(ValueError, match=r"'logit_mse_weight'.*none is registered"):
        DistillationArguments(output_dir=str(tmp_path), term_settings={"logit_mse_weight": 1.0})
    with pytest.raises(ValueError, match=r"built-in term"):
        unregister_term("loss_attn")
