"""Multiple choice, regression and multi-label classification: losses, metrics, detection, trainer, cache, resume.

The references are written from the definitions in the docstrings (per example, per label, in float64 with plain
`log`/`exp`), never by calling the functions under test; the metrics are checked by hand and against scipy /
scikit-learn where those happen to be installed.
"""

import copy
import logging
import math
import random

import numpy as np
import pytest
import torch
from conftest import VOCAB_SIZE
from datasets import Dataset
from transformers import BertConfig, BertForMultipleChoice, BertForSequenceClassification

from hf_distill import DistillationArguments, DistillationTrainer, losses
from hf_distill.task_metrics import multi_label_scores, regression_scores
from hf_distill.tasks import TASKS, Task, detect_task, register_task, task_of_class

T = 2.0
NUM_CHOICES, NUM_LABELS = 3, 4
KINDS = ("multiple-choice", "regression", "multi-label-classification")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def bert(cls, num_layers, seed, **overrides):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.3, **overrides,
    )  # fmt: skip
    return cls(config)


HEADS = {
    "multiple-choice": (BertForMultipleChoice, {}),
    "regression": (BertForSequenceClassification, {"num_labels": 1}),
    "multi-label-classification": (BertForSequenceClassification,
                                   {"num_labels": NUM_LABELS, "problem_type": "multi_label_classification"}),
}  # fmt: skip


def pair(kind):
    cls, overrides = HEADS[kind]
    return bert(cls, 4, 1, **overrides), bert(cls, 2, 2, **overrides)


def ids(rng, length):
    return [2] + [rng.randint(5, VOCAB_SIZE - 1) for _ in range(length - 2)] + [3]


def rows(kind: str, n: int, seed: int) -> list[dict]:
    """Examples of very different lengths; multiple choice: `NUM_CHOICES` sequences of different lengths each."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        if kind == "multiple-choice":
            examples.append({"input_ids": [ids(rng, rng.randint(3, 14)) for _ in range(NUM_CHOICES)],
                             "label": rng.randrange(NUM_CHOICES)})  # fmt: skip
        elif kind == "regression":
            examples.append({"input_ids": ids(rng, rng.randint(3, 14)), "label": rng.uniform(0, 5)})
        else:
            hot = [float(rng.random() < 0.4) for _ in range(NUM_LABELS)]
            examples.append({"input_ids": ids(rng, rng.randint(3, 14)), "label": hot})
    return examples


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pad every sequence (every choice of every example) to the batch's longest; `label` becomes `labels`."""
    nested = isinstance(features[0]["input_ids"][0], list)
    sequences = [s for f in features for s in (f["input_ids"] if nested else [f["input_ids"]])]
    length = max(len(s) for s in sequences)
    input_ids = torch.tensor([s + [0] * (length - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences])
    shape = (len(features), -1, length) if nested else (len(features), length)
    labels = torch.tensor([f["label"] for f in features])
    return {"input_ids": input_ids.view(shape), "attention_mask": mask.view(shape), "labels": labels}


def make_trainer(tmp_path, teacher, student, data=None, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to=[],
                    use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, temperature=T, alpha=0.3, beta=0.7,
                    gamma=0.0, logging_steps=1)  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(model=student, teacher_model=teacher, args=DistillationArguments(**settings),
                               train_dataset=data, eval_dataset=data, data_collator=collate)  # fmt: skip


def term_means(trainer, batch, train=False) -> dict[str, float]:
    trainer.model.train(train)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    return trainer._pop_term_means("train" if train else "eval")


# ---- the pure losses, against the formulas ------------------------------------------------------------------------


def sigmoid_kd_reference(s: list[float], t: list[float], temperature: float) -> float:
    """T^2 * (1/L) * sum_j [p log(p/q) + (1-p) log((1-p)/(1-q))], p = sigmoid(t_j/T), q = sigmoid(s_j/T)."""
    total = 0.0
    for s_j, t_j in zip(s, t):
        p, q = 1 / (1 + math.exp(-t_j / temperature)), 1 / (1 + math.exp(-s_j / temperature))
        total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    return temperature**2 * total / len(s)


def test_sigmoid_kd_matches_the_binary_kl_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, NUM_LABELS) * 3, torch.randn(5, NUM_LABELS) * 3
    per_example = losses.sigmoid_soft_label_loss(s, t, T, reduction="none")
    expected = [sigmoid_kd_reference(s[b].tolist(), t[b].tolist(), T) for b in range(5)]
    assert per_example.tolist() == pytest.approx(expected, rel=1e-5)
    assert losses.sigmoid_soft_label_loss(s, t, T).item() == pytest.approx(np.mean(expected), rel=1e-5)
    assert losses.sigmoid_soft_label_loss(t, t, T, reduction="none").abs().max().item() < 1e-6  # 0 at a match
    # by hand: s = 0 (q = 1/2), t = 2 ln 3 at T = 2 (p = 3/4): KL = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4
    one = losses.sigmoid_soft_label_loss(torch.tensor([[0.0]]), torch.tensor([[2 * math.log(3)]]), 2.0)
    assert one.item() == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)), rel=1e-6)


def test_sigmoid_kd_has_the_gradient_of_the_bce_to_the_teachers_probabilities():
    torch.manual_seed(1)
    s, t = torch.randn(3, NUM_LABELS, requires_grad=True), torch.randn(3, NUM_LABELS)
    losses.sigmoid_soft_label_loss(s, t, T).backward()
    ours = s.grad.clone()
    s.grad = None
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s / T, torch.sigmoid(t / T), reduction="none")
    (T**2 * bce.mean(dim=-1).mean()).backward()  # differs from the KL by the teacher's entropy only
    torch.testing.assert_close(ours, s.grad)


def test_multi_label_hard_loss_and_regression_loss_match_their_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = [
        -sum(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)) for z, y in zip(row, gold)) / 3
        for row, gold in zip(logits.tolist(), labels.tolist())
    ]
    assert losses.multi_label_hard_loss(logits, labels, "none").tolist() == pytest.approx(expected, rel=1e-6)
    assert losses.multi_label_hard_loss(logits, labels.long(), "none").tolist() == pytest.approx(expected, rel=1e-6)
    predictions, targets = torch.tensor([[1.0], [2.5], [-1.0]]), torch.tensor([0.5, 2.5, 1.0])
    assert losses.regression_loss(predictions, targets, "none").tolist() == pytest.approx([0.25, 0.0, 4.0])
    two = losses.regression_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]]), "none")
    assert two.tolist() == pytest.approx([5.0])  # mean over the outputs: (1 + 9) / 2
    with pytest.raises(ValueError, match="num_labels=1"):
        losses.regression_loss(predictions, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="multi-hot vector of num_labels=3"):
        losses.multi_label_hard_loss(logits, labels[:, :2])


# ---- metrics ------------------------------------------------------------------------------------------------------


def test_regression_scores_by_hand_and_against_scipy():
    scores = regression_scores([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert scores == pytest.approx({"pearson": 1.0, "spearman": 1.0, "mse": (1 + 4 + 9 + 16) / 4})
    # ties: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [1, 3, 2, 4] [1, 3, 2, 4]; Pearson of those by hand
    a, b = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4.0])
    a, b = a - a.mean(), b - b.mean()
    by_hand = (a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum())
    assert regression_scores([1, 2, 2, 3], [1, 3, 2, 4])["spearman"] == pytest.approx(by_hand)
    assert regression_scores([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"] == 0.0  # undefined: constant predictions
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 50).astype(float), rng.normal(size=50)
    scores = regression_scores(x[:, None], y)
    assert scores["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-9)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-9)


def test_multi_label_scores_by_hand_and_against_sklearn():
    predicted = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0]])
    gold = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    # per label: TP/FP/FN = (2, 0, 0), (0, 1, 0), (1, 1, 0); micro: TP 3, FP 2, FN 0
    scores = multi_label_scores(predicted, gold)
    assert scores == pytest.approx({"micro_f1": 6 / 8, "macro_f1": (1 + 0 + 2 / 3) / 3, "exact_match": 1 / 3})
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    predicted, gold = rng.integers(0, 2, (40, 5)), rng.integers(0, 2, (40, 5))
    predicted[:, 4] = gold[:, 4] = 0  # a label never present nor predicted: F1 0 (zero_division=0)
    scores = multi_label_scores(predicted, gold)
    assert scores["micro_f1"] == pytest.approx(metrics.f1_score(gold, predicted, average="micro", zero_division=0))
    assert scores["macro_f1"] == pytest.approx(metrics.f1_score(gold, predicted, average="macro", zero_division=0))
    assert scores["exact_match"] == pytest.approx(metrics.accuracy_score(gold, predicted))


# ---- detection: one head class, three problem types ------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"num_labels": 2}, "sequence-classification"),
    ({"num_labels": 1}, "regression"),  # transformers reads num_labels=1 without a problem_type as regression
    ({"num_labels": 1, "problem_type": "regression"}, "regression"),
    ({"num_labels": 3, "problem_type": "regression"}, "regression"),
    ({"num_labels": 3, "problem_type": "multi_label_classification"}, "multi-label-classification"),
    ({"num_labels": 3, "problem_type": "single_label_classification"}, "sequence-classification"),
])  # fmt: skip
def test_the_problem_type_selects_the_task(overrides, expected):
    model = bert(BertForSequenceClassification, 1, 0, **overrides)
    assert detect_task(model).name == expected
    assert task_of_class("BertForSequenceClassification", model.config).name == expected
    assert task_of_class("BertForSequenceClassification").name == "sequence-classification"  # no config: the first
    assert detect_task(bert(BertForMultipleChoice, 1, 0)).name == "multiple-choice"


def test_a_second_task_for_the_same_head_and_problem_type_is_refused():
    class Clash(Task):
        name, auto_class = "clash", "AutoModelForSequenceClassification"
        class_suffixes, problem_type = ("ForSequenceClassification",), "regression"

    with pytest.raises(ValueError, match="claims the class suffix"):
        register_task(Clash())
    assert "clash" not in TASKS


# ---- the trainer's terms, against references from the definitions ---------------------------------------------


def reference_terms(kind, teacher, student, batch) -> tuple[float, float]:
    """(CE, KD) averaged over the examples, one example at a time, from the definitions."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s_all = copy.deepcopy(student).eval()(**inputs).logits.double()
        t_all = copy.deepcopy(teacher).eval()(**inputs).logits.double()
    ce, kd = [], []
    for b, label in enumerate(batch["labels"].tolist()):
        s, t = s_all[b].tolist(), t_all[b].tolist()
        if kind == "multiple-choice":  # softmax over the choices
            log_q = [x - math.log(sum(math.exp(v) for v in s)) for x in s]
            p = [math.exp(x / T) / sum(math.exp(v / T) for v in t) for x in t]
            log_q_t = [x / T - math.log(sum(math.exp(v / T) for v in s)) for x in s]
            ce.append(-log_q[label])
            kd.append(T * T * sum(p_i * (math.log(p_i) - lq) for p_i, lq in zip(p, log_q_t)))
        elif kind == "regression":  # no temperature
            ce.append((s[0] - label) ** 2)
            kd.append((s[0] - t[0]) ** 2)
        else:
            sig = [1 / (1 + math.exp(-x)) for x in s]
            ce.append(-sum(y * math.log(q) + (1 - y) * math.log(1 - q) for q, y in zip(sig, label)) / len(s))
            kd.append(sigmoid_kd_reference(s, t, T))
    return float(np.mean(ce)), float(np.mean(kd))


@pytest.mark.parametrize("kind", KINDS)
def test_terms_match_the_definitions(tmp_path, kind):
    teacher, student = pair(kind)
    trainer = make_trainer(tmp_path, teacher, student)
    assert trainer.task.name == kind
    batch = collate(rows(kind, 5, seed=4))
    means = term_means(trainer, batch)
    ce, kd = reference_terms(kind, teacher, student, batch)
    assert kd > 1e-4
    assert means["loss_ce"] == pytest.approx(ce, rel=1e-4)
    assert means["loss_kd"] == pytest.approx(kd, rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_changes_no_term(tmp_path, kind):
    """Longer padding of every sequence (every choice) leaves every term, layer terms included, unchanged."""
    teacher, student = pair(kind)
    trainer = make_trainer(tmp_path, teacher, student, gamma=0.5, hidden_weight=1.0, relation_weight=1.0)
    examples = rows(kind, 4, seed=8)
    batch = collate(examples)
    padded = {k: torch.nn.functional.pad(v, (0, 5)) if k != "labels" else v for k, v in batch.items()}
    plain, more = term_means(trainer, batch), term_means(trainer, padded)
    assert set(plain) == {"loss_ce", "loss_kd", "loss_attn", "loss_hidden", "loss_relation"}
    assert more == pytest.approx(plain, rel=1e-4)


def test_multiple_choice_layer_terms_average_the_choices_of_each_example(tmp_path):
    """The attention, hidden and relation terms of an example are the mean over its choices of the terms of each
    choice run on its own, as one sequence of a head with the same encoder (a regression head here)."""
    teacher, student = pair("multiple-choice")
    settings = dict(gamma=0.5, hidden_weight=1.0, relation_weight=1.0, alpha=0.0, beta=0.0)
    trainer = make_trainer(tmp_path / "mc", teacher, student, **settings)
    single = []
    for model in (teacher, student):  # the same encoder under a one-sequence head
        other = bert(BertForSequenceClassification, model.config.num_hidden_layers, 0, num_labels=1)
        other.bert.load_state_dict(model.bert.state_dict())
        single.append(other)
    flat_trainer = make_trainer(tmp_path / "flat", *single, **settings)
    examples = rows("multiple-choice", 3, seed=9)
    means = term_means(trainer, collate(examples))
    per_choice = []
    for example in examples:  # each example's choices as a batch of their own, then averaged
        batch = collate([{"input_ids": choice, "label": 0.0} for choice in example["input_ids"]])
        per_choice.append(term_means(flat_trainer, batch))
    for name in ("loss_attn", "loss_hidden", "loss_relation"):
        assert means[name] == pytest.approx(np.mean([c[name] for c in per_choice]), rel=1e-4), name


# ---- training, cache, resume ----------------------------------------------------------------------------------


def dataset(kind: str, n: int = 16) -> Dataset:
    return Dataset.from_list(rows(kind, n, seed=3))


@pytest.mark.parametrize("kind", KINDS)
def test_training_logs_every_term_and_moves_only_the_student(tmp_path, kind):
    teacher, student = pair(kind)
    before_t, before_s = copy.deepcopy(teacher.state_dict()), copy.deepcopy(student.state_dict())
    layer_terms = dict(gamma=0.3, hidden_weight=0.5) if kind == "multiple-choice" else {}
    trainer = make_trainer(tmp_path, teacher, student, dataset(kind), max_steps=3, learning_rate=1e-3, **layer_terms)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    expected = {"loss_ce", "loss_kd"} | ({"loss_attn", "loss_hidden"} if layer_terms else set())
    assert len(logged) == 3 and all(expected <= set(e) and all(math.isfinite(e[k]) for k in expected) for e in logged)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before_s.items())
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["eval_loss_kd"])


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_cache_gives_the_same_training(tmp_path, kind):
    """With teacher_cache_dir the teacher's outputs are computed once, stored, and give the same steps."""
    histories = []
    for cache in (None, str(tmp_path / "cache")):
        teacher, student = pair(kind)
        trainer = make_trainer(tmp_path / f"run{len(histories)}", teacher, student, dataset(kind, 8), max_steps=2,
                               teacher_cache_dir=cache, learning_rate=1e-3)  # fmt: skip
        trainer.train()
        histories.append([e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e])
    assert len(histories[0]) == 2 and histories[0] == pytest.approx(histories[1], rel=1e-5)
    (key,) = list((tmp_path / "cache").iterdir())  # one stored table, row for row the teacher's logits
    stored = torch.tensor(trainer._cached_teacher_logits(trainer.train_dataset)["teacher_logits"])  # read back
    with torch.no_grad():
        expected = teacher.eval()(**{k: v for k, v in collate(list(dataset(kind, 8))).items() if k != "labels"})
    torch.testing.assert_close(stored, expected.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["multiple-choice"])  # the one with other input shapes; resume is task-agnostic
def test_resume_gives_the_uninterrupted_student(tmp_path, kind):
    settings = dict(max_steps=3, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    teacher, student = pair(kind)
    make_trainer(tmp_path / "whole", teacher, student, dataset(kind), **settings).train()
    teacher, resumed = pair(kind)
    first = make_trainer(tmp_path / "cut", teacher, resumed, dataset(kind), **settings)
    first.train()
    teacher, resumed = pair(kind)
    again = make_trainer(tmp_path / "cut", teacher, resumed, dataset(kind), **settings)
    again.train(resume_from_checkpoint=str(tmp_path / "cut" / "out" / "checkpoint-2"))
    assert again.state.global_step == 3
    for name, value in student.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


# ---- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("teacher_overrides", "student_overrides", "expected"), [
    ({"num_labels": 1}, {"num_labels": 2}, "student is set up for sequence-classification.*teacher for regression"),
    ({"num_labels": 3, "problem_type": "multi_label_classification"}, {"num_labels": 3},
     "teacher for multi-label-classification.*same problem_type and num_labels"),
    ({"num_labels": 3, "problem_type": "multi_label_classification"},
     {"num_labels": 4, "problem_type": "multi_label_classification"}, "teacher has num_labels=3 but the student"),
])  # fmt: skip
def test_problem_type_or_num_labels_mismatch_is_refused(tmp_path, teacher_overrides, student_overrides, expected):
    teacher = bert(BertForSequenceClassification, 2, 1, **teacher_overrides)
    student = bert(BertForSequenceClassification, 1, 2, **student_overrides)
    with pytest.raises(ValueError, match=expected):
        make_trainer(tmp_path, teacher, student)


def test_multiple_choice_labels_out_of_range_are_refused(tmp_path):
    teacher, student = pair("multiple-choice")
    bad = [dict(r, label=NUM_CHOICES) for r in rows("multiple-choice", 4, seed=1)]
    trainer = make_trainer(tmp_path, teacher, student, Dataset.from_list(bad))
    with pytest.raises(ValueError, match=r"labels \[3\] are outside 0..2: the batch has 3 choices"):
        trainer.train()


def test_regression_ignores_the_temperature_and_says_so(tmp_path, caplog):
    teacher, student = pair("regression")
    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        trainer = make_trainer(tmp_path, teacher, student, temperature=7.0)
    assert "temperature=7.0 is ignored for regression" in caplog.text
    batch = collate(rows("regression", 4, seed=2))
    hot = term_means(trainer, batch)
    trainer.args.temperature = 1.0
    assert term_means(trainer, batch) == pytest.approx(hot)  # the temperature changes nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        make_trainer(tmp_path, *pair("regression"), temperature=None)  # the recipe's: nothing to say
    assert "ignored" not in caplog.text
