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


# SST-2-like rows (lower-cased words, GLUE's trailing space): three full sentences and their phrases; "the film"
# is a phrase of two sentences, "is" a phrase of all three.
PHRASE_ROWS = ["the film is good ", "the film ", "is good ", "the film is a bore ", "a bore ", "is ", "good ",
               "it is not the film ", "not the film ", "the film is "]  # fmt: skip


def contains(outer: str, inner: str) -> bool:  # the reference: a word span, by padded substring search
    return f" {inner.strip()} " in f" {outer.strip()} "


def test_sentence_groups_put_each_phrase_with_a_full_sentence_containing_it():
    group = quality.sentence_groups(PHRASE_ROWS)
    full = [i for i, s in enumerate(PHRASE_ROWS) if not any(contains(t, s) for t in PHRASE_ROWS if t != s)]
    assert full == [0, 3, 7]
    assert sorted(set(group)) == full  # every group is a full sentence, and every full sentence is its own group
    for i, root in enumerate(group):
        assert contains(PHRASE_ROWS[root], PHRASE_ROWS[i])
    assert group[1] == 3 and group[5] == 3  # shared phrases go with the longest containing sentence
    assert group[8] == 7 and group[6] == 0  # a phrase of one sentence only goes with it


def test_sentence_halves_keep_whole_sentences_together():
    # 30 copies with no word in common (suffix k on every word), so the groups are 30 x 3 sentences
    rows = [" ".join(f"{w}{k}" for w in s.split()) + " " for k in range(30) for s in PHRASE_ROWS]
    group = quality.sentence_groups(rows)
    teacher_ids, student_ids = quality.half_indices(len(rows), rows)
    assert not set(teacher_ids) & set(student_ids) and sorted(teacher_ids + student_ids) == list(range(len(rows)))
    assert not {group[i] for i in teacher_ids} & {group[i] for i in student_ids}  # no sentence straddles the halves
    assert abs(len(teacher_ids) - len(rows) / 2) <= 5  # about half the rows (a group holds at most 5)
    assert quality.half_indices(len(rows), rows) == (teacher_ids, student_ids)  # the same split every run
    teacher_rows, student_rows = [rows[i] for i in teacher_ids], [rows[i] for i in student_ids]
    seen = [r for r in student_rows if any(contains(t, r) for t in teacher_rows)]
    assert quality.inside_share(teacher_rows, student_rows) == pytest.approx(len(seen) / len(student_rows))
    full = [rows[i] for i in set(group)]
    assert seen and all(sum(contains(f, r) for f in full) >= 2 for r in seen)  # only phrases that sentences share
    by_row = quality.half_indices(len(rows))
    row_share = quality.inside_share([rows[i] for i in by_row[0]], [rows[i] for i in by_row[1]])
    assert row_share > 2 * len(seen) / len(student_rows)  # a row split leaves the teacher far more of their rows
    keys = {quality.teacher_cache(quality.parse_args(a), "data")[1]
            for a in ([], ["--split-teacher"], ["--split-teacher", "sentences"])}  # fmt: skip
    assert len(keys) == 3
    assert quality.parse_args(["--split-teacher"]).split_teacher == "rows"  # the first split's flag keeps its meaning


def test_inside_share_counts_rows_seen_whole_or_inside_a_longer_row():
    assert quality.inside_share(["a b c ", "d "], ["b c ", "c a ", "a b c ", "d ", "e "]) == pytest.approx(3 / 5)
    assert quality.inside_share([], ["a "]) == 0


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


@pytest.mark.parametrize("arm", ["ce_lr2e-4", "ce_lr2e-4_cosine", "minilm_cosine"])
def test_schedule_arms_follow_their_schedule(tmp_path, arm):
    from transformers import TrainingArguments
    from transformers.optimization import get_scheduler

    opts = quality.parse_args(["--arms", arm])
    settings = quality.ARMS[arm]
    args = TrainingArguments(**quality.training_args(tmp_path, 100, opts, 0, settings))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    warmup = args.get_warmup_steps(100)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=100)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    progress = (30 - 6) / (100 - 6)  # 6% warmup of 100 steps, then the decay
    cosine = settings["lr"] * 0.5 * (1 + math.cos(math.pi * progress))
    linear = settings["lr"] * (1 - progress)
    assert warmup == 6 and cosine - linear > 0.1 * settings["lr"]  # a step where the two schedules differ
    assert scheduler.get_last_lr()[0] == pytest.approx(cosine if arm.endswith("cosine") else linear)
