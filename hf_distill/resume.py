"""Resuming safely: pick the newest *complete* checkpoint, and refuse one whose distillation settings differ.

`Trainer` resumes from the highest-numbered `checkpoint-N` even if the process was killed while writing it, and
happily continues a run with another teacher or other loss weights. `DistillationTrainer.train()` calls
`resolve_checkpoint` and `check_resume_settings` (through `checks.before_train`) before the first step.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .artifacts import CONFIG_NAME, DistillationRecord
from .terms import registered_terms

__all__ = ["RESUME_SETTINGS", "check_resume_settings", "resolve_checkpoint", "resume_settings"]

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


def _is_complete(checkpoint: Path) -> bool:
    """`Trainer` writes `trainer_state.json` last; a checkpoint whose state file parses was saved in full."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def resolve_checkpoint(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: `True` means the newest *complete* `checkpoint-N` in `output_dir`.

    `Trainer` would take the highest-numbered folder even if the process was killed while writing it; here such a
    folder is skipped with a warning, and an explicit path to one is refused.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        folders = sorted(
            (p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _CHECKPOINT_RE.match(p.name)),
            key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)),
            reverse=True,
        ) if os.path.isdir(output_dir) else []  # fmt: skip
        for i, folder in enumerate(folders):
            if _is_complete(folder):
                if i:
                    skipped = ", ".join(str(f) for f in folders[:i])
                    logger.warning("Skipping incomplete checkpoint(s) %s (killed while saving?)", skipped)
                return str(folder)
        raise ValueError(
            f"resume_from_checkpoint=True but output_dir={output_dir!r} holds no complete checkpoint-N folder"
            f"{' (incomplete: ' + ', '.join(f.name for f in folders) + ')' if folders else ''}. Start without "
            "resume_from_checkpoint, or pass the path of a checkpoint folder."
        )
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint={str(path)!r} is not a folder: pass a checkpoint-N folder or True.")
    if not _is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint={str(path)!r} is incomplete (no readable {TRAINER_STATE_NAME}): the process "
            "probably died while saving it. Resume from the previous checkpoint, or pass True to pick the newest "
            "complete one."
        )
    return str(path)


def check_resume_settings(checkpoint: str | os.PathLike, current: DistillationRecord, allow: bool = False) -> None:
    """Refuse to resume a run whose distillation settings (`resume_settings()`) differ from the checkpoint's.

    Raises:
        `ValueError` listing each differing setting, unless `allow` (then a warning).
    """
    file = Path(checkpoint) / CONFIG_NAME
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is missing or unreadable: cannot check that the distillation settings match.", file)
        return
    now, saved = current.settings(), {**saved, **(saved.get("term_settings") or {})}
    diffs = [
        f"{key}: checkpoint {saved[key]!r}, now {now[key]!r}"
        for key in resume_settings()
        if saved.get(key) is not None and now.get(key) is not None and saved[key] != now[key]
    ]
    if not diffs:
        return
    message = f"the distillation settings differ from those of the checkpoint {str(checkpoint)!r}: " + "; ".join(diffs)
    if allow:
        logger.warning("%s. Continuing because allow_resume_with_different_settings=True.", message)
        return
    raise ValueError(
        f"{message}. Resume with the checkpoint's settings, start a fresh run in a new output_dir, or set "
        "allow_resume_with_different_settings=True to continue with the new settings on purpose."
    )
