"""The multiple-choice, regression and multi-label example scripts, end to end on a tiny teacher saved here and a
few dozen synthetic local rows. Each runs in this process (as `python examples/<script> ...` would, through
`runpy`), so the suite does not pay for three more interpreter starts, and is checked like the other task examples."""

import csv
import json
import random
import runpy
import sys
from pathlib import Path

import pytest
from test_task_examples import PEOPLE, PLACES, STUDENT_LAYERS, check_student, save_bert_teacher, write_jsonl

from hf_distill import load_distillation_config

ROOT = Path(__file__).resolve().parents[1]
TOPICS = {0: "people", 1: "places", 2: "travel"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def run_example(script: str, tmp_path: Path, monkeypatch, *options: str) -> Path:
    """Run `examples/<script>` with `options` as its command line; return its output directory."""
    out = tmp_path / "out"
    argv = [script, "--output_dir", str(out), "--num_layers", str(STUDENT_LAYERS), "--max_steps", "2", *options]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    return out


def test_multiple_choice_example(tmp_path, monkeypatch):
    rng = random.Random(0)
    rows = []
    for _ in range(24):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        endings = [place, rng.choice(PLACES), "the city"]
        rows.append({"sent1": f"{person} visited {place}", "sent2": f"{person} met bob in",
                     **{f"ending{i}": e for i, e in enumerate(endings)}, "label": 0})  # fmt: skip
    teacher = save_bert_teacher(tmp_path, "BertForMultipleChoice")
    train, dev = write_jsonl(tmp_path / "train.jsonl", rows[:16]), write_jsonl(tmp_path / "dev.jsonl", rows[16:])
    out = run_example("distil_multiple_choice.py", tmp_path, monkeypatch, "--teacher", str(teacher),
                      "--train_file", str(train), "--validation_file", str(dev))  # fmt: skip
    history = check_student(out, "AutoModelForMultipleChoice")
    assert all("loss_attn" in entry for entry in history["train"])  # the attention of every choice
    assert 0 <= history["eval"][-1]["eval_accuracy"] <= 1


def test_regression_example(tmp_path, monkeypatch):
    rng = random.Random(1)
    paths = []
    for name, n in (("train.csv", 16), ("dev.csv", 8)):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["sentence1", "sentence2", "label"])
            for _ in range(n):
                writer.writerow([f"{rng.choice(PEOPLE)} visited {rng.choice(PLACES)}",
                                 f"{rng.choice(PEOPLE)} was in {rng.choice(PLACES)}", rng.uniform(0, 5)])  # fmt: skip
        paths.append(tmp_path / name)
    teacher = save_bert_teacher(tmp_path, "BertForSequenceClassification", num_labels=1)
    out = run_example("distil_regression.py", tmp_path, monkeypatch, "--teacher", str(teacher),
                      "--train_file", str(paths[0]), "--validation_file", str(paths[1]))  # fmt: skip
    history = check_student(out, "AutoModelForSequenceClassification")
    assert load_distillation_config(out).task == "regression"  # num_labels=1: read as transformers reads it
    assert -1 <= history["eval"][-1]["eval_pearson"] <= 1


def test_multi_label_example(tmp_path, monkeypatch):
    rng = random.Random(2)
    rows = [{"text": f"{rng.choice(PEOPLE)} visited {rng.choice(PLACES)}",
             "labels": [t for t in TOPICS.values() if rng.random() < 0.5]} for _ in range(24)]  # fmt: skip
    teacher = save_bert_teacher(tmp_path, "BertForSequenceClassification", num_labels=3, id2label=TOPICS,
                                label2id={v: k for k, v in TOPICS.items()},
                                problem_type="multi_label_classification")  # fmt: skip
    train, dev = write_jsonl(tmp_path / "train.jsonl", rows[:16]), write_jsonl(tmp_path / "dev.jsonl", rows[16:])
    out = run_example("distil_multi_label.py", tmp_path, monkeypatch, "--teacher", str(teacher),
                      "--train_file", str(train), "--validation_file", str(dev))  # fmt: skip
    history = check_student(out, "AutoModelForSequenceClassification")
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"
    assert load_distillation_config(out).task == "multi-label-classification"
    assert 0 <= history["eval"][-1]["eval_micro_f1"] <= 1
