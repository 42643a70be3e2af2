"""Child process for test_resume.py: distil tiny models built in code; optionally SIGKILL itself after a checkpoint.

    python tests/_resume_run.py OUTPUT_DIR [--kill-in-save STEP] [--resume]

Run with the repository root on PYTHONPATH. `--kill-in-save` sends a real SIGKILL (no cleanup, no exception
handlers) in the middle of writing `distillation_config.json` of `checkpoint-STEP`: its temporary file is written
but not yet renamed, so that checkpoint is left incomplete, as after a crash during a save, while the previous
checkpoint is complete.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import types
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import pad_collator, random_rows, tiny_bert  # noqa: E402

from hf_distill import DistillationArguments, DistillationTrainer  # noqa: E402

MAX_STEPS, SAVE_STEPS, LOGGING_STEPS = 10, 4, 2  # logging_steps divides save_steps: no window spans a checkpoint


def kill_while_writing_config(trainer: DistillationTrainer, step: int) -> None:
    """SIGKILL inside `atomic_write_text` (after the temporary file is written) for the step-`step` config file."""
    from hf_distill import artifacts

    def fsync(fd: int) -> None:
        if trainer.state.global_step == step and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync(fd)

    artifacts.os = types.SimpleNamespace(**{**vars(os), "fsync": fsync})


def build_trainer(output_dir: str, teacher=None, **overrides) -> DistillationTrainer:
    """The run under test; `overrides` change DistillationArguments fields."""
    settings = dict(
        output_dir=output_dir, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, logging_steps=LOGGING_STEPS,
        per_device_train_batch_size=4, learning_rate=1e-3, seed=42, temperature=4.0,
        alpha=0.1, beta=0.5, gamma=0.4, report_to="none", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    args = DistillationArguments(**settings | overrides)
    return DistillationTrainer(
        model=tiny_bert(num_layers=2, seed=2),  # student dropout is on, so the RNG state must be restored exactly
        teacher_model=teacher if teacher is not None else tiny_bert(num_layers=4, seed=1),
        args=args,
        train_dataset=Dataset.from_dict(random_rows(24, seed=3)),  # 6 steps per epoch: the run crosses an epoch
        data_collator=pad_collator,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(1)

    trainer = build_trainer(options.output_dir)
    if options.kill_in_save is not None:
        kill_while_writing_config(trainer, options.kill_in_save)
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    trainer.save_model()


if __name__ == "__main__":
    main()
