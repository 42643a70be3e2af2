"""Helpers of the quality study's scripts (benchmarks/quality.py, benchmarks/teacher_signal.py), on tiny inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
import teacher_signal  # noqa: E402


def test_teacher_signal_against_hand_computed_values():
    logits = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0], [0.0, math.log(3.0)]])  # p = .9/.1, .5/.5, .25/.75
    labels = torch.tensor([0, 1, 0])
    stats = teacher_signal.signal(logits, labels, 1.0)
    assert stats["accuracy"] == pytest.approx(1 / 3)  # the tie's argmax is class 0: wrong for label 1
    assert stats["p_max"] == pytest.approx((0.9 + 0.5 + 0.75) / 3)
    entropy = [-(p * math.log2(p) + (1 - p) * math.log2(1 - p)) for p in (0.9, 0.5, 0.75)]
    assert stats["entropy_bits"] == pytest.approx(sum(entropy) / 3)
    assert stats["near_one_hot"] == 0
    assert stats["kl_to_label_bits"] == pytest.approx((-math.log2(0.9) + 1 - math.log2(0.25)) / 3)
    softer = teacher_signal.signal(logits, labels, 2.0)  # T = 2: sqrt of the odds
    assert softer["p_max"] == pytest.approx((0.75 + 0.5 + math.sqrt(3) / (1 + math.sqrt(3))) / 3)


def test_student_rows_is_a_fixed_sorted_sample():
    train = Dataset.from_dict({"i": list(range(100))})
    assert quality.student_rows(train, 1.0) is train
    sample = quality.student_rows(train, 0.25)["i"]
    assert len(sample) == 25 and sample == sorted(sample) and len(set(sample)) == 25
    assert quality.student_rows(train, 0.25)["i"] == sample  # the same for every arm and seed
    with pytest.raises(SystemExit, match="--student-rows"):
        quality.student_rows(train, 1.5)


def test_split_teacher_halves_are_disjoint_fixed_and_keyed_apart():
    train = Dataset.from_dict({"i": list(range(101))})
    teacher_rows, student_rows = quality.disjoint_halves(train)
    teacher_ids, student_ids = list(teacher_rows["i"]), list(student_rows["i"])
    assert (len(teacher_ids), len(student_ids)) == (50, 51)
    assert not set(teacher_ids) & set(student_ids) and sorted(teacher_ids + student_ids) == list(range(101))
    assert teacher_ids != list(range(50))  # shuffled, not the file's first half
    assert list(quality.disjoint_halves(train)[0]["i"]) == teacher_ids  # the same split every run
    plain = quality.teacher_cache(quality.parse_args([]), "data")
    split = quality.teacher_cache(quality.parse_args(["--split-teacher"]), "data")
    assert "rows" not in plain[0] and split[0]["rows"]  # teachers fine-tuned on every row keep their cache keys
    assert plain[1] != split[1] and plain[2] != split[2]


def test_label_smoothing_arm_is_a_control_not_the_baseline(tmp_path):
    opts = quality.parse_args(["--arms", "ce_lr2e-4"])
    assert quality.training_args(tmp_path, 5, opts, 0, quality.ARMS["ls0.1_lr2e-4"])["label_smoothing_factor"] == 0.1
    assert quality.training_args(tmp_path, 5, opts, 0, quality.ARMS["ce_lr2e-4"])["label_smoothing_factor"] == 0.0
    runs = [
        {"arm": "ce_lr2e-4", "kind": "ce", "seed": 0, "accuracy": 0.80, "seconds": 1.0, "curve": [[5, 0.80]]},
        {"arm": "ls0.1_lr2e-4", "kind": "ce", "seed": 0, "accuracy": 0.90, "seconds": 1.0, "curve": [[5, 0.90]]},
    ]
    rows, baseline = quality.summarise(runs, teacher_acc=0.95)
    assert baseline == "ce_lr2e-4"  # better, but not the plain Trainer's cross-entropy
    assert {r["arm"]: r["diff"] for r in rows}["ls0.1_lr2e-4"] == pytest.approx(0.10)


def test_gap_closed_compares_an_arm_with_ce_on_the_same_seeds():
    def run(arm, seed, acc):
        return {"arm": arm, "kind": "kd", "seed": seed, "accuracy": acc, "seconds": 60.0, "curve": [[5, acc]]}

    runs = [run("ce_lr2e-4", 0, 0.86), run("ce_lr2e-4", 1, 0.82), run("ce_lr2e-4", 2, 0.84)]
    runs += [run("kd_one_seed", 0, 0.87), run("kd_seed_one", 1, 0.835)]  # lower mean, higher paired gain (+0.015)
    rows, baseline = quality.summarise(runs, teacher_acc=0.90)
    row = {r["arm"]: r for r in rows}["kd_one_seed"]
    # Seed 0's CE scored 0.86: the arm closed 0.01 of that seed's 0.04 gap, not 0.03 of the 3-seed mean's 0.06.
    assert baseline == "ce_lr2e-4"
    assert row["diff"] == pytest.approx(0.01) and row["gap_closed"] == pytest.approx(0.25)
    assert math.isnan(row["diff_se"]) and row["retention"] == pytest.approx(0.87 / 0.90)
    assert {r["arm"]: r for r in rows}["ce_lr2e-4"]["gap_closed"] == pytest.approx(0.0)
    assert [r["arm"] for r in rows] == ["kd_seed_one", "kd_one_seed", "ce_lr2e-4"]  # by paired gain, not by mean
