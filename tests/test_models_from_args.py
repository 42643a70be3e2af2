"""The teacher from `teacher_model_name_or_path`, the student built from `model` with `student_num_layers`, the
help text and the recorded training length: what an unchanged example script needs from the arguments alone."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset
from transformers import BertForSequenceClassification, HfArgumentParser

from hf_distill import DistillationArguments, DistillationTrainer


def _args(tmp_path, **overrides) -> DistillationArguments:
    settings = dict(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=8,
                    max_steps=2, logging_steps=1, save_strategy="no", learning_rate=1e-2, seed=0,
                    disable_tqdm=True)  # fmt: skip
    return DistillationArguments(**settings | overrides)


def _trainer(model, args, **kwargs) -> DistillationTrainer:
    data = Dataset.from_dict(random_rows(16, seed=3))
    return DistillationTrainer(model=model, args=args, train_dataset=data, data_collator=pad_collator, **kwargs)


def _saved_teacher(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    teacher = tiny_bert(num_layers=4, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    return str(tmp_path / "teacher"), {k: v.clone() for k, v in teacher.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _layer(model, index: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.bert.encoder.layer[index].state_dict().items()}


def test_teacher_loaded_from_the_arguments(tmp_path):
    path, weights = _saved_teacher(tmp_path)
    student = tiny_bert(num_layers=2, seed=2)
    trainer = _trainer(student, _args(tmp_path, teacher_model_name_or_path=path))
    assert type(trainer.teacher_model) is BertForSequenceClassification  # the Auto class of the student's task
    assert _same(trainer.teacher_model.state_dict(), weights) and trainer.model is student
    trainer.train()
    trainer.save_model()
    assert _same(trainer.teacher_model.state_dict(), weights)  # frozen
    record = json.loads((tmp_path / "out" / "distillation_config.json").read_text())
    assert record["teacher_model"] == path and record["teacher_num_layers"] == 4


def test_student_built_from_the_model_which_is_the_teacher(tmp_path):
    model = tiny_bert(num_layers=4, seed=1)
    weights, layer_1, layer_3 = model.state_dict(), _layer(model, 1), _layer(model, 3)
    weights = {k: v.clone() for k, v in weights.items()}
    trainer = _trainer(model, _args(tmp_path, student_layers=[1, 3]))
    student = trainer.model
    assert trainer.teacher_model is model and student is not model and len(student.bert.encoder.layer) == 2
    assert _same(_layer(student, 0), layer_1) and _same(_layer(student, 1), layer_3)  # copied before training
    trainer.train()
    trainer.save_model()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized <= {id(p) for p in student.parameters()}  # the optimizer never saw the teacher
    assert _same(model.state_dict(), weights)  # the teacher did not move
    assert not _same(_layer(student, 0), layer_1)  # the student did
    record = json.loads((tmp_path / "out" / "distillation_config.json").read_text())
    assert record["student_layers_from_teacher"] == [1, 3]
    assert (record["student_num_layers"], record["teacher_num_layers"]) == (2, 4)
    assert BertForSequenceClassification.from_pretrained(tmp_path / "out").config.num_hidden_layers == 2


def test_named_teacher_wins_over_the_model_the_student_is_built_from(tmp_path):
    path, weights = _saved_teacher(tmp_path)
    base = tiny_bert(num_layers=4, seed=5)
    trainer = _trainer(base, _args(tmp_path, teacher_model_name_or_path=path, student_num_layers=2))
    assert trainer.teacher_model is not base and _same(trainer.teacher_model.state_dict(), weights)
    assert _same(_layer(trainer.model, 1), _layer(base, 3))  # default spread 4 -> 2 keeps [1, 3]
    assert trainer.teacher_name_or_path == path


def test_teacher_revision_and_remote_code_switch_reach_from_pretrained(tmp_path, monkeypatch):
    import transformers

    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs, name=name)
        return tiny_bert(num_layers=4, seed=1)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fake_from_pretrained)
    args = _args(tmp_path, teacher_model_name_or_path="org/teacher", teacher_revision="v2",
                 teacher_trust_remote_code=True)  # fmt: skip
    _trainer(tiny_bert(num_layers=2), args)
    assert seen["name"] == "org/teacher" and seen["revision"] == "v2" and seen["trust_remote_code"] is True


@pytest.mark.parametrize(("overrides", "kwargs", "message"), [
    ({}, {}, "no teacher: pass `teacher_model`"),
    ({"teacher_model_name_or_path": "a"}, {"teacher_model": "b"}, "name two different teachers"),
    ({"student_num_layers": 5}, {}, "student_num_layers / student_layers: `num_layers`=5 is more than"),
    ({"student_layers": [3, 1]}, {}, "must be strictly increasing"),
])  # fmt: skip
def test_impossible_teacher_or_student(tmp_path, overrides, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _trainer(tiny_bert(num_layers=4), _args(tmp_path, **overrides), **kwargs)


def test_ready_optimizer_refused_when_the_student_is_built(tmp_path):
    model = tiny_bert(num_layers=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="would then train the teacher"):
        _trainer(model, _args(tmp_path, student_num_layers=2), optimizers=(optimizer, None))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"student_num_layers": 0}, "`student_num_layers` must be a positive integer"),
    ({"student_num_layers": 3, "student_layers": [0, 1]}, "names 2 layers"),
    ({"student_layers": [-1, 2]}, "one layer index >= 0"),
])  # fmt: skip
def test_bad_student_arguments(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **overrides)


def test_help_shows_the_effective_defaults():
    text = " ".join(HfArgumentParser(DistillationArguments).format_help().split())  # argparse wraps lines
    text = text[text.index("options:") :]  # the option list, not the usage line
    defaults = {"temperature": "4.0", "alpha": "0.1", "beta": "0.5", "gamma": "0.4", "attention_loss": "'mse'",
                "hidden_weight": "0.0", "relation_loss": "'qkv'"}  # fmt: skip
    for flag, default in defaults.items():
        start = text.index(f"--{flag} ")
        shown = text[text.index("(default:", start) :]  # the first default after the flag is its own
        assert shown.startswith(f"(default: {default}, or the recipe's)"), (flag, shown[:60])


def test_record_states_the_training_length_that_was_run(tmp_path, teacher):
    trainer = _trainer(tiny_bert(num_layers=2, seed=2), _args(tmp_path), teacher_model=teacher)
    trainer.train()
    record = trainer.distillation_record()
    assert record.max_steps == 2 and record.num_train_epochs is None  # max_steps, not the unused 3.0 epochs
    assert record.epochs_trained == 1.0  # 16 rows / batch 8 = 2 steps = one epoch

    trainer = _trainer(tiny_bert(num_layers=2, seed=2), _args(tmp_path, max_steps=-1, num_train_epochs=2),
                       teacher_model=teacher)  # fmt: skip
    trainer.train()
    record = trainer.distillation_record()
    assert (record.num_train_epochs, record.epochs_trained, record.global_step) == (2, 2.0, 4)
