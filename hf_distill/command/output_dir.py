"""The `hf-distill` command's `--output_dir`: resume the run it holds, start afresh, or refuse.

Which checkpoint is resumed and which settings must match are decided by `hf_distill.resume`, the same rules
`DistillationTrainer.train(resume_from_checkpoint=...)` applies; only the messages here name the command's flags.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..artifacts import DistillationRecord
from ..resume import checkpoint_folders, latest_complete_checkpoint, resolve_checkpoint, setting_differences

__all__ = ["check_output_dir", "check_resumable", "remove_checkpoints"]

logger = logging.getLogger(__name__)


def check_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: str | None) -> str | None:
    """The checkpoint to resume from (`None`: a fresh run); refuses a non-empty folder that cannot be resumed.

    Without `--resume_from_checkpoint` that is the newest *complete* checkpoint of `output_dir`
    (`resume.latest_complete_checkpoint`: a folder whose save was cut half-way is skipped with a warning).
    """
    if resume_from_checkpoint and overwrite:
        raise ValueError(
            f"--resume_from_checkpoint={resume_from_checkpoint!r} and --overwrite_output_dir contradict each other: "
            "drop one."
        )
    if resume_from_checkpoint:
        return resolve_checkpoint(resume_from_checkpoint, output_dir)  # refuses an incomplete one
    path = Path(output_dir)
    if overwrite or not path.is_dir() or not any(path.iterdir()):
        return None
    last = latest_complete_checkpoint(output_dir)
    if last is None:
        incomplete = [folder.name for folder in checkpoint_folders(output_dir)]
        raise ValueError(
            f"--output_dir={output_dir!r} already exists, is not empty, and holds no hf-distill checkpoint to resume "
            f"from{' (only incomplete ones: ' + ', '.join(incomplete) + ')' if incomplete else ''}. Pass "
            "--overwrite_output_dir to write over it, or choose another --output_dir."
        )
    return last


def check_resumable(checkpoint: str, expected: DistillationRecord | Mapping[str, object]) -> None:
    """Refuse to resume `checkpoint` when the settings that must match (`resume.setting_differences`) differ from
    `expected` (this run's record, or some of its fields)."""
    differences = setting_differences(checkpoint, expected)
    if differences:
        raise ValueError(
            f"cannot resume from {checkpoint}: its distillation settings differ from this run's "
            f"({'; '.join(differences)}). Rerun with the checkpoint's settings to resume, pass "
            "--overwrite_output_dir to start afresh, choose another --output_dir, or pass "
            "--allow_resume_with_different_settings to continue with the new settings on purpose."
        )


def remove_checkpoints(output_dir: str) -> None:
    """`--overwrite_output_dir`: delete the previous run's `checkpoint-N` folders."""
    for checkpoint in checkpoint_folders(output_dir):
        logger.warning("--overwrite_output_dir: deleting the previous run's %s", checkpoint)
        shutil.rmtree(checkpoint)
