"""A new task is one module: a `Task` defined and registered here reaches detection, the loss and the trainer.

The toy task, "toy-scoring", is a head no other task claims (`*ForToyScoring`). Its KD term is deliberately not the
library's: the per-example mean squared error between student and teacher logits (Ba & Caruana's logit regression),
so the references below (written from that definition) can only match if the trainer used the toy's terms.
"""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import pad_collator
from datasets import Dataset
from test_tasks import bert, make_trainer
from transformers import BertForSequenceClassification

from hf_distill import tasks
from hf_distill.tasks import TASKS, Task, detect_task, get_task, register_task, task_of_class
from hf_distill.teacher_cache import EXAMPLE_LOGITS

NUM_CLASSES = 3


class BertForToyScoring(BertForSequenceClassification):
    """A head class of the toy task: its name ends with the toy's suffix, and with no other task's."""


class ToyScoring(Task):
    name = "toy-scoring"
    auto_class = "AutoModelForSequenceClassification"
    class_suffixes = ("ForToyScoring",)
    description = "a toy: class scores regressed onto the teacher's"
    teacher_cache = EXAMPLE_LOGITS

    def output_terms(self, student, teacher, inputs, temperature, weights, training):
        (logits,) = student
        terms = {}
        if self.has_labels(inputs):
            ce = F.cross_entropy(logits.float(), inputs["labels"], reduction="none")
            terms["loss_ce"] = (ce, torch.ones_like(ce))
        if teacher is not None:
            kd = (logits.float() - teacher[0].float()).pow(2).mean(dim=-1)
            terms["loss_kd"] = (kd, torch.ones_like(kd))
        objective = sum(weights[n] * values.sum() for n, (values, _) in terms.items() if weights[n] > 0)
        return terms, objective


@pytest.fixture
def toy():
    task = register_task(ToyScoring())
    yield task
    TASKS.pop(task.name)


def toy_pair():
    return (
        bert(BertForToyScoring, 4, 1, num_labels=NUM_CLASSES),
        bert(BertForToyScoring, 2, 2, num_labels=NUM_CLASSES),
    )


def toy_rows(n: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 12, (n,), generator=generator).tolist()
    return [
        {"input_ids": torch.randint(5, 64, (length,), generator=generator).tolist(), "label": i % NUM_CLASSES}
        for i, length in enumerate(lengths)
    ]


def reference(teacher, student, batch) -> tuple[float, float]:
    """(CE, KD) means over the examples, from the toy's definition, one example at a time."""
    with torch.no_grad():
        ce, kd = [], []
        for b in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][b].sum())
            ids = batch["input_ids"][b : b + 1, :n]
            s, t = copy.deepcopy(student).eval()(input_ids=ids).logits[0], teacher.eval()(input_ids=ids).logits[0]
            ce.append(-torch.log_softmax(s, -1)[batch["labels"][b]])
            kd.append(((s - t) ** 2).sum() / NUM_CLASSES)
    return torch.stack(ce).mean().item(), torch.stack(kd).mean().item()


def test_unregistered_head_is_refused_and_registered_head_is_detected():
    with pytest.raises(ValueError, match="cannot distil a BertForToyScoring"):
        detect_task(toy_pair()[1])
    task = register_task(ToyScoring())
    try:
        assert detect_task(toy_pair()[1]) is task
        assert task_of_class("RobertaForToyScoring") is task and get_task("toy-scoring") is task
        assert task_of_class("BertForSequenceClassification") is tasks.SEQUENCE_CLASSIFICATION  # others unchanged
    finally:
        TASKS.pop(task.name)
    assert task_of_class("BertForToyScoring") is None


def test_register_task_refuses_a_taken_name_or_class_suffix(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_task(ToyScoring())
    clash = type("Clash", (ToyScoring,), {"name": "clash", "class_suffixes": ("ForTokenClassification",)})
    with pytest.raises(ValueError, match="'clash' claims the class suffix.*ForTokenClassification.*token-classif"):
        register_task(clash())


def test_output_terms_are_the_registered_tasks(toy):
    teacher, student = toy_pair()
    batch = pad_collator(toy_rows(6))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        teacher_logits = tasks.task_logits(toy, teacher.eval()(**inputs))
        student_logits = tasks.task_logits(toy, student.eval()(**inputs))
    terms, objective = tasks.output_terms(toy, student_logits, teacher_logits, batch, 2.0)
    ce, kd = reference(teacher, student, batch)
    assert terms["loss_ce"][0].mean().item() == pytest.approx(ce, rel=1e-4)
    assert terms["loss_kd"][0].mean().item() == pytest.approx(kd, rel=1e-4)
    assert objective.item() == pytest.approx(6 * (ce + kd), rel=1e-4)
    assert tasks.units_per_example(toy, batch).tolist() == [1] * 6  # the example, the base's default unit


def test_the_trainer_distils_a_registered_task(toy, tmp_path):
    teacher, student = toy_pair()
    data = Dataset.from_list(toy_rows(16))
    trainer = make_trainer(tmp_path, teacher, student, data, max_steps=2, teacher_cache_dir=str(tmp_path / "cache"))
    assert trainer.task is toy and trainer.distillation_record().task == "toy-scoring"
    batch = pad_collator(toy_rows(6))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    ce, kd = reference(teacher, trainer.model, batch)
    means = trainer._pop_term_means("eval")
    assert means["loss_kd"] == pytest.approx(kd, rel=1e-4) and loss.item() == pytest.approx(ce, rel=1e-4)

    before = copy.deepcopy(trainer.model.state_dict())
    teacher_before = copy.deepcopy(teacher.state_dict())
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    logged = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
    assert len(logged) == 2 and all(entry["loss_kd"] > 0 for entry in logged)
    assert len(os.listdir(tmp_path / "cache")) == 1  # the toy's outputs were cached in the format it names
