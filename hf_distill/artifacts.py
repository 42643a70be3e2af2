"""What a distillation run writes beside the weights: `distillation_config.json` and `training_history.json`.

Both are written atomically (temporary file, fsync, rename), so a crash leaves the old file or the new one,
never half of one. `load_distillation_config` and `load_training_history` read them back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._version import __version__

__all__ = [
    "CONFIG_NAME",
    "HISTORY_NAME",
    "DistillationRecord",
    "atomic_open",
    "atomic_write_text",
    "load_distillation_config",
    "load_training_history",
    "training_history",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "distillation_config.json"
HISTORY_NAME = "training_history.json"
# The built-in terms' formula (`hf_distill.terms.loss_formula()` with no term registered; a test checks they agree).
LOSS_FORMULA = (
    "alpha * CE(s, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T)) + gamma * L_attn + hidden_weight * L_hidden"
    " + relation_weight * L_relation"
)


def _loss_formula() -> str:
    """The formula of every registered term, read when a record is made (imported here: this module stands alone)."""
    from .terms import loss_formula

    return loss_formula()


@dataclass
class DistillationRecord:
    """The lineage and settings of a distilled student, as saved in `distillation_config.json`."""

    method: str = "knowledge_distillation"
    loss_formula: str = field(default_factory=_loss_formula)
    kd_loss_convention: str = "KL(teacher || student) at temperature T, multiplied by T^2 (Hinton et al., 2015)"
    teacher_model: str | None = None
    teacher_architecture: str | None = None
    student_architecture: str | None = None
    task: str | None = None  # hf_distill.tasks: which logits were distilled, at which positions
    teacher_num_parameters: int | None = None
    student_num_parameters: int | None = None
    teacher_num_layers: int | None = None
    student_num_layers: int | None = None
    compression_ratio: float | None = None
    student_layers_from_teacher: list[int] | None = None
    recipe: str | None = None
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    attention_loss: str | None = None
    hidden_weight: float | None = None
    hidden_loss: str | None = None
    hidden_projection: str | None = None  # TinyBERT's learned W_e / W_h when the widths differ (projection.py)
    relation_weight: float | None = None
    relation_loss: str | None = None
    relation_heads: int | None = None
    layer_map: list[int] | None = None
    term_settings: dict[str, Any] | None = None  # settings of terms added with hf_distill.terms.register_term
    learning_rate: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    total_train_batch_size: int | None = None
    num_train_epochs: float | None = None  # None when max_steps > 0 sets the length instead
    max_steps: int | None = None
    epochs_trained: float | None = None  # the epochs actually run (fractional), from the trainer state
    seed: int | None = None
    global_step: int | None = None
    metric_for_best_model: str | None = None
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    training_time_seconds: float | None = None
    augmentation: dict[str, Any] | None = None  # the transfer set's settings (hf_distill.augment), when one was made
    teacher_lineage: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["term_settings"] is None:  # only runs with registered terms save it: older readers never see it
            del data["term_settings"]
        return data

    def settings(self) -> dict[str, Any]:
        """Every loss setting by name: the fields, and those of registered terms (`term_settings`) beside them."""
        return {**self.to_dict(), **(self.term_settings or {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationRecord:
        """Build from a dict; unknown keys (from a newer version) are ignored with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("Ignoring unknown keys in %s: %s", CONFIG_NAME, ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run's numbers."""
    import torch
    import transformers

    return {
        "hf_distill": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; when the block ends, fsync it and rename it over `path`.

    Readers (and a process that dies mid-write) see either the old file or the whole new one, never half of one.
    The one implementation of an atomic write in the package: text (`mode="w"`, UTF-8) or bytes (`mode="wb"`).

    >>> with atomic_open("plot.png", "wb") as handle:  # doctest: +SKIP
    ...     figure.savefig(handle, format="png")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def training_history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Split `Trainer.state.log_history` into training entries (losses, learning rate) and evaluation entries."""
    train, evaluation, summary = [], [], []
    for entry in log_history:
        if "loss" in entry:
            train.append(entry)
        elif any(key.startswith("eval_") for key in entry):
            evaluation.append(entry)
        elif "train_runtime" in entry:
            summary.append(entry)
    return {"train": train, "eval": evaluation, "summary": summary}


def write_artifacts(output_dir: str | os.PathLike, record: DistillationRecord, log_history: list[dict]) -> None:
    """Write `distillation_config.json` and `training_history.json` into `output_dir`, atomically."""
    atomic_write_json(Path(output_dir) / CONFIG_NAME, record.to_dict())
    atomic_write_json(Path(output_dir) / HISTORY_NAME, training_history(log_history))


def _resolve(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def load_distillation_config(path: str | os.PathLike) -> DistillationRecord:
    """Read `distillation_config.json` from a saved student folder (or the file itself).

    >>> record = load_distillation_config("out")  # doctest: +SKIP
    >>> record.compression_ratio, record.layer_map  # doctest: +SKIP
    """
    file = _resolve(path, CONFIG_NAME)
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} at {file}: is this the output of a DistillationTrainer run?")
    return DistillationRecord.from_dict(json.loads(file.read_text(encoding="utf-8")))


def load_training_history(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read `training_history.json` (keys `train`, `eval`, `summary`) from a saved student folder."""
    file = _resolve(path, HISTORY_NAME)
    if not file.is_file():
        raise FileNotFoundError(f"no {HISTORY_NAME} at {file}: is this the output of a DistillationTrainer run?")
    return json.loads(file.read_text(encoding="utf-8"))
