"""A run SIGKILLed mid-save resumes to exactly the uninterrupted result; resuming with other settings is refused.

The runs happen in child processes (`tests/_resume_run.py`) so that the kill is a real SIGKILL: no exception
handler, no `finally`, no flush.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _resume_run import MAX_STEPS, build_trainer
from safetensors.torch import load_file

from hf_distill import load_distillation_config, load_training_history

pytestmark = pytest.mark.slow  # about 25 s: three child processes, each importing transformers

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "_resume_run.py"
# Timings, and Trainer's `train_loss`, which averages only the losses of the steps run in the last process.
NOT_COMPARABLE = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def child(output_dir: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(output_dir), *flags], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run killed while saving checkpoint-8 (checkpoint-4 complete), started together."""
    root = tmp_path_factory.mktemp("resume")
    full, killed = child(root / "full"), child(root / "killed", "--kill-in-save", "8")
    (full_rc, full_log), (killed_rc, killed_log) = finish(full), finish(killed)
    assert full_rc == 0, full_log
    assert killed_rc == -signal.SIGKILL, killed_log
    return root / "full", root / "killed"


def test_kill_leaves_complete_checkpoint_and_no_corrupt_file(runs):
    full, killed = runs
    assert not list(full.rglob("*.tmp"))  # a run that is not killed leaves no temporary file
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    partial = killed / "checkpoint-8"
    # The kill hit distillation_config.json's atomic write: no such file, only the hidden temporary one.
    assert not (partial / "distillation_config.json").exists()
    assert not (partial / "trainer_state.json").exists()
    assert list(partial.glob(".distillation_config.json.*.tmp"))
    for file in killed.rglob("*.json"):  # every JSON that exists is whole
        json.loads(file.read_text())
    assert load_distillation_config(killed / "checkpoint-4").global_step == 4


def test_resume_after_kill_gives_the_uninterrupted_student(runs, tmp_path):
    full, killed = runs
    killed = shutil.copytree(killed, tmp_path / "killed")  # keep the fixture's folder as the kill left it
    rc, log = finish(child(killed, "--resume"))
    assert rc == 0, log
    assert "Skipping incomplete checkpoint(s)" in log and "checkpoint-8" in log  # not the half-written one

    expected, got = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name

    history, reference = load_training_history(killed), load_training_history(full)
    assert [e["step"] for e in history["train"]] == list(range(2, MAX_STEPS + 1, 2))  # continuous
    assert history["train"] == reference["train"]  # same losses (teacher terms included), lr, grad norms
    assert all(e["loss_kd"] > 0 and e["loss_attn"] > 0 for e in history["train"])  # the teacher took part
    summary = {k: v for k, v in history["summary"][-1].items() if k not in NOT_COMPARABLE}
    assert summary == {k: v for k, v in reference["summary"][-1].items() if k not in NOT_COMPARABLE}


def test_resume_with_different_settings_refused(runs, tmp_path):
    _, killed = runs
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(killed / "checkpoint-4", checkpoint)
    trainer = build_trainer(str(tmp_path), temperature=2.0, gamma=0.0)
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    message = str(info.value)
    assert "temperature: checkpoint 4.0, now 2.0" in message and "gamma: checkpoint 0.4, now 0.0" in message
    assert "allow_resume_with_different_settings=True" in message
    assert trainer.state.global_step == 0


def test_resume_with_different_teacher_refused(runs, tmp_path):
    from conftest import tiny_bert

    _, killed = runs
    trainer = build_trainer(str(tmp_path), teacher=tiny_bert(num_layers=3, seed=1))
    with pytest.raises(ValueError, match="teacher_num_parameters: .*teacher_num_layers: checkpoint 4, now 3"):
        trainer.train(resume_from_checkpoint=str(killed / "checkpoint-4"))


def test_resume_with_different_settings_allowed_on_request(runs, tmp_path, caplog):
    _, killed = runs
    shutil.copytree(killed / "checkpoint-4", tmp_path / "checkpoint-4")
    trainer = build_trainer(str(tmp_path), temperature=2.0, allow_resume_with_different_settings=True, max_steps=5,
                            save_steps=100)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 5
    assert "temperature: checkpoint 4.0, now 2.0" in caplog.text


def test_explicit_incomplete_checkpoint_refused(runs):
    _, killed = runs
    trainer = build_trainer(str(killed.parent / "unused"))
    with pytest.raises(ValueError, match="checkpoint-8.*incomplete.*died while saving"):
        trainer.train(resume_from_checkpoint=str(killed / "checkpoint-8"))
