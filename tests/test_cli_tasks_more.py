"""`hf-distill` for multiple choice, regression and multi-label classification: end to end on tiny models saved
here and a few synthetic rows written to `tmp_path` (the task detected from the teacher), the teacher's metrics
recomputed here one row at a time, and the bad input refused before any work."""

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import wordpiece_tokenizer
from test_cli import run_cli, to_argv
from transformers import BertConfig, BertForMultipleChoice, BertForSequenceClassification

from hf_distill import load_training_history

PEOPLE, PLACES = ["anna", "bob", "carl", "dora"], ["paris", "rome", "oslo", "lima"]
WORDS = ["visited", "met", "in", "and", "the", "city", "today", "lives", "saw", "then", "went", "home", "to", "a"]
TOPICS = {0: "people", 1: "places", 2: "travel"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return wordpiece_tokenizer(tmp_path_factory.mktemp("vocab"), [*PEOPLE, *PLACES, *WORDS])


def save_teacher(root: Path, tokenizer, cls, **config) -> str:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.3, **config)  # fmt: skip
    model = cls(config)
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return str(root / "teacher")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(PEOPLE)} {rng.choice(['visited', 'saw'])} {rng.choice(PLACES)} {rng.choice(WORDS)}"


def options(teacher: str, train: str, dev: str, out: Path, **overrides) -> list[str]:
    settings = {
        "teacher_model_name_or_path": teacher, "student_num_layers": 2, "train_file": train, "validation_file": dev,
        "output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "no", "max_seq_length": 32,
        "latency_samples": 1, "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
        "learning_rate": 1e-3,
    } | overrides  # fmt: skip
    return to_argv({k: v for k, v in settings.items() if v is not None})


def run_ok(argv, capsys, task: str, primary: str, names: set[str]) -> dict:
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    out = Path(argv[argv.index("--output_dir") + 1])
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == task and report["metric"] == primary
    for row in ("teacher", "student_before", "student_after"):
        assert set(report["evaluation"][row]["metrics"]) == names, row
    history = load_training_history(out)
    assert history["eval"][-1][f"eval_{primary}"] == pytest.approx(
        report["evaluation"]["student_after"]["metrics"][primary]
    )
    for entry in history["train"]:
        assert math.isfinite(entry["loss_ce"]) and math.isfinite(entry["loss_kd"]) and entry["loss_kd"] >= 0
    return report


def refused(argv, capsys) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert not (Path(argv[argv.index("--output_dir") + 1]) / "report.json").exists()
    return err


# ---- multiple choice ---------------------------------------------------------------------------------------------


def swag_rows(n: int, seed: int) -> list[dict]:
    """SWAG's own layout: `sent1` the context, each choice `sent2 + " " + ending<i>`, `label` the right one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        endings = [f"{place} today", f"{rng.choice(PLACES)} and {rng.choice(WORDS)}", "home then"]
        label = rng.randrange(3)
        endings[0], endings[label] = endings[label], endings[0]
        rows.append({"sent1": f"{person} lives in {place}", "sent2": f"{person} went to",
                     **{f"ending{i}": e for i, e in enumerate(endings)}, "label": label})  # fmt: skip
    return rows


def reference_choice_accuracy(teacher: str, tokenizer, rows: list[dict]) -> float:
    """One example at a time: each choice `sent2 + " " + ending` after `sent1`, the argmax of the teacher's scores."""
    model = BertForMultipleChoice.from_pretrained(teacher).eval()
    correct = 0
    for row in rows:
        seconds = [f"{row['sent2']} {row[f'ending{i}']}" for i in range(3)]
        encoding = tokenizer([row["sent1"]] * 3, seconds, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v[None] for k, v in encoding.items()}).logits[0]
        correct += int(logits.argmax()) == row["label"]
    return correct / len(rows)


def test_multiple_choice_end_to_end(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForMultipleChoice)
    dev_rows = swag_rows(10, seed=1)
    train, dev = write_jsonl(tmp_path / "t.jsonl", swag_rows(16, seed=0)), write_jsonl(tmp_path / "d.jsonl", dev_rows)
    report = run_ok(options(teacher, train, dev, tmp_path / "out"), capsys, "multiple-choice", "accuracy",
                    {"accuracy"})  # fmt: skip
    assert report["evaluation"]["teacher"]["metrics"]["accuracy"] == pytest.approx(
        reference_choice_accuracy(teacher, tokenizer, dev_rows)
    )
    assert (report["data"]["text_column"], report["data"]["text_pair_column"]) == ("sent1", "ending0,ending1,ending2")


def test_multiple_choice_reads_a_list_column_named_by_the_flags(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForMultipleChoice)
    rows = [{"story": r["sent1"], "options": [r[f"ending{i}"] for i in range(3)], "answer": r["label"]}
            for r in swag_rows(12, seed=2)]  # fmt: skip
    train, dev = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "d.jsonl", rows[:6])
    argv = options(teacher, train, dev, tmp_path / "out", text_column="story", label_column="answer",
                   text_pair_column="options", max_steps=1, eval_steps=1, teacher_cache_dir=str(tmp_path / "c"),
                   recipe="logits")  # fmt: skip
    run_ok(argv, capsys, "multiple-choice", "accuracy", {"accuracy"})
    assert len(list((tmp_path / "c").iterdir())) == 1  # the teacher's choice logits were cached


@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: r.update(label=3), "row 0 has label=3, but a multiple-choice label is the index of the right ending, "
                                  "an integer in 0..2"),
    (lambda r: r.update(label=1.5), "row 0 has label=1.5"),
    (lambda r: r.pop("ending2"), "rows have different numbers of endings"),
])  # fmt: skip
def test_multiple_choice_bad_data(tmp_path, tokenizer, capsys, change, expected):
    teacher = save_teacher(tmp_path, tokenizer, BertForMultipleChoice)
    rows = swag_rows(4, seed=0)
    change(rows[0])
    if "ending2" not in rows[0]:  # JSON lines with a missing key: write the rest as a list column instead
        rows = [{"sent1": r["sent1"], "endings": [r[k] for k in sorted(r) if k.startswith("ending")],
                 "label": r["label"]} for r in rows]  # fmt: skip
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    assert expected in refused(options(teacher, train, train, tmp_path / "out"), capsys)


# ---- regression --------------------------------------------------------------------------------------------------


def write_sts_csv(path: Path, n: int, seed: int) -> str:
    """STS-B-like pairs: the score counts the words the two sentences share (0..4)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sentence1", "sentence2", "label"])
        for _ in range(n):
            a, b = sentence(rng), sentence(rng)
            writer.writerow([a, b, float(len(set(a.split()) & set(b.split())))])
    return str(path)


def test_regression_end_to_end_with_an_independent_pearson(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForSequenceClassification, num_labels=1)
    train, dev = write_sts_csv(tmp_path / "t.csv", 16, seed=0), write_sts_csv(tmp_path / "d.csv", 10, seed=1)
    report = run_ok(options(teacher, train, dev, tmp_path / "out", temperature=1.0), capsys, "regression", "pearson",
                    {"pearson", "spearman", "mse"})  # fmt: skip
    assert (report["data"]["text_column"], report["data"]["text_pair_column"]) == ("sentence1", "sentence2")
    model = BertForSequenceClassification.from_pretrained(teacher).eval()
    with open(dev, newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictions = []
    for row in rows:
        with torch.no_grad():
            predictions.append(
                model(**tokenizer(row["sentence1"], row["sentence2"], return_tensors="pt")).logits.item()
            )
    gold = np.array([float(r["label"]) for r in rows])
    teacher_metrics = report["evaluation"]["teacher"]["metrics"]
    assert teacher_metrics["pearson"] == pytest.approx(np.corrcoef(predictions, gold)[0, 1], abs=1e-5)
    assert teacher_metrics["mse"] == pytest.approx(float(((np.array(predictions) - gold) ** 2).mean()), rel=1e-4)


@pytest.mark.parametrize(("suffix", "expected"), [
    ("csv", "--task regression reads a float label column, but the train data's row 2 has label='high' (str)"),
    ("jsonl", "row 2 has label=None"),
])  # fmt: skip
def test_regression_refuses_a_non_float_label_column(tmp_path, tokenizer, capsys, suffix, expected):
    teacher = save_teacher(tmp_path, tokenizer, BertForSequenceClassification, num_labels=1)
    rows = [{"sentence": "anna saw rome", "label": 1.5}, {"sentence": "bob saw oslo", "label": 2}]
    rows.append({"sentence": "carl saw lima", "label": "high" if suffix == "csv" else None})
    if suffix == "csv":  # the column is read as strings: '1.5' and '2' are numbers, 'high' is not
        train = tmp_path / "t.csv"
        train.write_text("sentence,label\n" + "".join(f"{r['sentence']},{r['label']}\n" for r in rows))
    else:
        train = write_jsonl(tmp_path / "t.jsonl", rows)
    assert expected in refused(options(teacher, str(train), str(train), tmp_path / "out"), capsys)


def test_regression_task_with_a_classification_teacher_is_refused(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForSequenceClassification, num_labels=2)
    train = write_sts_csv(tmp_path / "t.csv", 4, seed=0)
    err = refused(options(teacher, train, train, tmp_path / "out", task="regression"), capsys)
    assert "--task='regression', but the teacher is a BertForSequenceClassification (sequence-classification)" in err


# ---- multi-label classification -----------------------------------------------------------------------------------


def topic_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = sentence(rng)
        topics = [name for name in TOPICS.values() if rng.random() < 0.5]
        rows.append({"text": text, "labels": topics})
    return rows


def test_multi_label_end_to_end(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForSequenceClassification, num_labels=3, id2label=TOPICS,
                           label2id={v: k for k, v in TOPICS.items()},
                           problem_type="multi_label_classification")  # fmt: skip
    dev_rows = topic_rows(10, seed=1)
    train, dev = write_jsonl(tmp_path / "t.jsonl", topic_rows(16, seed=0)), write_jsonl(tmp_path / "d.jsonl", dev_rows)
    report = run_ok(options(teacher, train, dev, tmp_path / "out"), capsys, "multi-label-classification", "micro_f1",
                    {"micro_f1", "macro_f1", "exact_match"})  # fmt: skip
    model = BertForSequenceClassification.from_pretrained(teacher).eval()
    exact = 0
    for row in dev_rows:
        with torch.no_grad():
            logits = model(**tokenizer(row["text"], return_tensors="pt")).logits[0]
        exact += {TOPICS[i] for i in range(3) if torch.sigmoid(logits[i]) > 0.5} == set(row["labels"])
    assert report["evaluation"]["teacher"]["metrics"]["exact_match"] == pytest.approx(exact / len(dev_rows))


def test_multi_label_refuses_an_unknown_label(tmp_path, tokenizer, capsys):
    teacher = save_teacher(tmp_path, tokenizer, BertForSequenceClassification, num_labels=3, id2label=TOPICS,
                           label2id={v: k for k, v in TOPICS.items()},
                           problem_type="multi_label_classification")  # fmt: skip
    rows = topic_rows(4, seed=0)
    rows[1]["labels"] = ["people", "sports"]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    err = refused(options(teacher, train, train, tmp_path / "out"), capsys)
    assert "row 1 has label 'sports' in 'labels', which the teacher does not know" in err
