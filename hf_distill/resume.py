"""Resuming safely: pick the newest *complete* checkpoint, and refuse one whose distillation settings differ.

`Trainer` resumes from the highest-numbered `checkpoint-N` even if the process was killed while writing it, and
happily continues a run with another teacher or other loss weights. This module is the one path for both entry
points: `DistillationTrainer.train(resume_from_checkpoint=...)` (through `checks.before_train`) and the
`hf-distill` command (an `--output_dir` holding a run) pick the checkpoint with `resolve_checkpoint` /
`latest_complete_checkpoint` and compare settings with `setting_differences`.

A checkpoint is complete when it holds a readable `trainer_state.json` (which `Trainer` writes last), the model
weights and a readable `distillation_config.json` (our record, written right after the weights).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .artifacts import CONFIG_NAME, DistillationRecord
from .errors import DistillationSettingError
from .terms import registered_terms

__all__ = [
    "RESUME_SETTINGS",
    "check_resume_settings",
    "checkpoint_folders",
    "latest_complete_checkpoint",
    "missing_parts",
    "resolve_checkpoint",
    "resume_settings",
    "setting_differences",
]

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TEACHER_SETTINGS = ("teacher_model", "teacher_architecture", "teacher_num_parameters", "teacher_num_layers")


def resume_settings() -> tuple[str, ...]:
    """Settings that must match for a resumed run to continue the same distillation: the teacher, each registered
    term's settings and what the trainer records about it (`hf_distill.terms`), and the layer map."""
    per_term = [name for term in registered_terms() for name in (*term.settings, *term.recorded)]
    return tuple(dict.fromkeys([*_TEACHER_SETTINGS, *per_term, "layer_map"]))


# The fields of `distillation_config.json` checked for the built-in terms.
RESUME_SETTINGS = resume_settings()
# The student's shape and origin: with other ones the checkpoint's weights would be another student's.
_STUDENT_SETTINGS = ("student_num_layers", "student_layers_from_teacher")
# Model weights as `save_model` writes them (whole, sharded or a PEFT adapter); FSDP and DeepSpeed save their own.
_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                 ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)  # fmt: skip
_ENGINE_WEIGHT_PREFIXES = ("pytorch_model_fsdp", "global_step")


def _readable_json(file: Path) -> bool:
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _has_weights(checkpoint: Path) -> bool:
    if any((checkpoint / name).is_file() for name in _WEIGHT_FILES):
        return True
    return any(entry.name.startswith(_ENGINE_WEIGHT_PREFIXES) for entry in checkpoint.iterdir())


def missing_parts(checkpoint: str | os.PathLike) -> list[str]:
    """What `checkpoint` lacks to be resumed (an empty list: it is complete).

    A save cut half-way leaves the folder without `trainer_state.json` (written last by `Trainer`), or without the
    weights or `distillation_config.json` (a kill while writing them), or with one of them truncated.
    """
    checkpoint = Path(checkpoint)
    missing = []
    if not _readable_json(checkpoint / TRAINER_STATE_NAME):
        missing.append(TRAINER_STATE_NAME)
    if not _has_weights(checkpoint):
        missing.append("the model weights")
    if not _readable_json(checkpoint / CONFIG_NAME):
        missing.append(CONFIG_NAME)
    return missing


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    if not os.path.isdir(output_dir):
        return []
    folders = [p for p in Path(output_dir).iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(folders, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)), reverse=True)


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None: none); newer incomplete ones are skipped, warning."""
    folders = checkpoint_folders(output_dir)
    for i, folder in enumerate(folders):
        if not missing_parts(folder):
            if i:
                skipped = ", ".join(f"{f} (missing {', '.join(missing_parts(f))})" for f in folders[:i])
                logger.warning("Skipping incomplete checkpoint(s) %s (killed while saving?)", skipped)
            return str(folder)
    return None


def resolve_checkpoint(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: `True` means the newest *complete* `checkpoint-N` in `output_dir`.

    `Trainer` would take the highest-numbered folder even if the process was killed while writing it; here such a
    folder is skipped with a warning, and an explicit path to one is refused.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        latest = latest_complete_checkpoint(output_dir)
        if latest is not None:
            return latest
        folders = checkpoint_folders(output_dir)
        raise ValueError(
            f"resume_from_checkpoint=True but output_dir={output_dir!r} holds no complete checkpoint-N folder"
            f"{' (incomplete: ' + ', '.join(f.name for f in folders) + ')' if folders else ''}. Start without "
            "resume_from_checkpoint, or pass the path of a checkpoint folder."
        )
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint={str(path)!r} is not a folder: pass a checkpoint-N folder or True.")
    missing = missing_parts(path)
    if missing:
        raise ValueError(
            f"resume_from_checkpoint={str(path)!r} is incomplete (missing or unreadable: {', '.join(missing)}): the "
            "process probably died while saving it. Resume from the previous checkpoint, or pass True to pick the "
            "newest complete one."
        )
    return str(path)


def _same(key: str, old: object, new: object) -> bool:
    if key == "teacher_model" and isinstance(old, str) and isinstance(new, str):
        return old == new or os.path.realpath(old) == os.path.realpath(new)  # the same folder, named two ways
    return old == new


def setting_differences(
    checkpoint: str | os.PathLike, current: DistillationRecord | Mapping[str, object]
) -> list[str]:
    """`"key: checkpoint OLD, now NEW"` for each setting that must match to resume (`RESUME_SETTINGS` and the
    student's shape) but differs between `checkpoint`'s `distillation_config.json` and `current`.

    A setting missing on either side (an older record, or a caller that does not know it) is not compared.
    """
    file = Path(checkpoint) / CONFIG_NAME
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is missing or unreadable: cannot check that the distillation settings match.", file)
        return []
    now = current.settings() if isinstance(current, DistillationRecord) else dict(current)
    saved = {**saved, **(saved.get("term_settings") or {})}
    return [
        f"{key}: checkpoint {saved[key]!r}, now {now[key]!r}"
        for key in (*resume_settings(), *_STUDENT_SETTINGS)
        if saved.get(key) is not None and now.get(key) is not None and not _same(key, saved[key], now[key])
    ]


def check_resume_settings(checkpoint: str | os.PathLike, current: DistillationRecord, allow: bool = False) -> None:
    """Refuse to resume a run whose distillation settings (`setting_differences`) differ from the checkpoint's.

    Raises:
        `DistillationSettingError` (a `ValueError`) listing each differing setting, unless `allow` (then a warning).
    """
    diffs = setting_differences(checkpoint, current)
    if not diffs:
        return
    message = f"the distillation settings differ from those of the checkpoint {str(checkpoint)!r}: " + "; ".join(diffs)
    if allow:
        logger.warning("%s. Continuing because allow_resume_with_different_settings=True.", message)
        return
    raise DistillationSettingError(
        f"{message}. Resume with the checkpoint's settings, start a fresh run in a new output_dir, or set "
        "allow_resume_with_different_settings=True to continue with the new settings on purpose.",
        tuple(diff.split(":", 1)[0] for diff in diffs),
    )
