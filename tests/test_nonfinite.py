"""A NaN/inf loss term stops training before the update (naming term and step), or skips the step if opted in."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.guards import NonFiniteLossError


def nan_teacher_logits_on_call(teacher, bad_call: int) -> None:
    """Make the teacher's `bad_call`-th forward pass (1-based) return NaN logits, as a broken teacher would."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] == bad_call:
            output.logits = torch.full_like(output.logits, math.nan)
        return output

    teacher.register_forward_hook(hook)


class Snapshots(TrainerCallback):
    """The student's weights after every optimizer step."""

    def __init__(self):
        self.after_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = [p.detach().clone() for p in model.parameters()]


def make_trainer(tmp_path, teacher, **overrides) -> DistillationTrainer:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4, report_to="none",
                    logging_steps=1, save_steps=1, learning_rate=1e-3, gamma=0.0)  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(
        model=tiny_bert(num_layers=2, seed=2),
        teacher_model=teacher,
        args=DistillationArguments(**settings),
        train_dataset=Dataset.from_dict(random_rows(32, seed=3)),
        data_collator=pad_collator,
    )


def test_nonfinite_loss_stops_before_the_update_and_names_term_and_step(tmp_path):
    teacher = tiny_bert(num_layers=4, seed=1)
    nan_teacher_logits_on_call(teacher, bad_call=4)
    trainer = make_trainer(tmp_path, teacher)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "step 4" in message and "loss_kd=nan" in message and "loss_ce" not in message
    assert "skip_nonfinite_steps=True" in message
    out = Path(trainer.args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # The weights in memory are still those of the last good step, which checkpoint-3 holds.
    saved = load_file(out / "checkpoint-3" / "model.safetensors")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
        assert torch.isfinite(tensor).all()


def test_nonfinite_attention_term_is_named(tmp_path):
    trainer = make_trainer(tmp_path, tiny_bert(num_layers=4, seed=1), gamma=0.4, max_steps=3, save_steps=100)
    recorder, calls = trainer._teacher_recorder, {"n": 0}
    real = recorder.attention_maps

    def broken():
        calls["n"] += 1
        maps = real()
        return [torch.full_like(m, math.inf) for m in maps] if calls["n"] == 2 else maps

    recorder.attention_maps = broken
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*: loss_attn=inf\. "):
        trainer.train()
    assert trainer.state.global_step == 1


def test_skip_nonfinite_steps_makes_no_update_and_counts(tmp_path, caplog):
    teacher = tiny_bert(num_layers=4, seed=1)
    nan_teacher_logits_on_call(teacher, bad_call=3)
    trainer = make_trainer(tmp_path, teacher, skip_nonfinite_steps=True, save_steps=100)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    trainer.train()

    assert trainer.state.global_step == 6
    steps = snapshots.after_step
    assert all(torch.equal(a, b) for a, b in zip(steps[2], steps[3])), "the skipped step changed the weights"
    assert not all(torch.equal(a, b) for a, b in zip(steps[3], steps[4])), "training went on after the skip"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # AdamW saw 5 steps, not 6: the skipped one left its moments and step count alone.
    states = [s for s in trainer.optimizer.state.values() if "step" in s]
    assert states and all(float(s["step"]) == 5 for s in states)

    assert "Skipping optimizer step 3: non-finite loss (loss_kd=nan); 1 step(s) skipped so far" in caplog.text
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e.get("skipped_nonfinite_steps", 0) for e in logs] == [0, 0, 1, 1, 1, 1]
    assert all(math.isfinite(e["loss_kd"]) for e in logs if "loss_kd" in e)
    assert len([e for e in logs if "loss_kd" in e]) == 5  # the skipped step's window holds no kd value
