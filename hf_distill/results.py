"""`distillation_results.json`: what was measured about the teacher and the student, in the library's own layout.

The model card (`hf_distill.card`) shows these results; it reads nothing else that a caller measured. Whoever
measures the models writes them into the output folder before the card is written: the `hf-distill` command does
after its timed evaluations, and a script around `DistillationTrainer` can too:

    >>> write_results(trainer.args.output_dir, DistillationResults(  # doctest: +SKIP
    ...     metric="accuracy", teacher={"accuracy": 0.91}, student_after={"accuracy": 0.88}))
    >>> trainer.create_model_card()  # doctest: +SKIP

Output folders written before this file existed hold the command's `report.json` instead; `load_results` still reads
the results out of it (`_from_report`), so an older folder's card keeps its results table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_json

__all__ = ["LEGACY_REPORT_NAME", "RESULTS_NAME", "DistillationResults", "load_results", "write_results"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "distillation_results.json"
LEGACY_REPORT_NAME = "report.json"  # read only when RESULTS_NAME is absent (folders from before it existed)
_MODELS = ("teacher", "student_before", "student_after")


@dataclass
class DistillationResults:
    """Measured results of a distillation run, as the model card shows them. Every field is optional.

    Args:
        metric (`str`, *optional*): the primary metric (higher is better), e.g. `"accuracy"`; the card's retention
            and gap-closed sentences use it. Default: `accuracy`.
        teacher, student_before, student_after (`dict[str, float]`): metric name to value for the teacher, the
            student before distillation and after it (an `eval_` prefix is dropped; losses and timings are left out).
        speedup (`float`, *optional*): teacher latency divided by student latency.
        latency (`dict`): how the speed was measured (e.g. `device`, `batch_size`, `latency_samples`), printed as
            given.

    Values of the wrong type are kept here and left out by the card (it shows only numbers).
    """

    metric: str | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    student_before: dict[str, Any] = field(default_factory=dict)
    student_after: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationResults:
        """Build from a dict; unknown keys (from a newer version) are ignored, missing ones take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})


def write_results(output_dir: str | os.PathLike, results: DistillationResults) -> Path:
    """Write `results` to `output_dir/distillation_results.json` atomically; return the path."""
    path = Path(output_dir) / RESULTS_NAME
    atomic_write_json(path, results.to_dict())
    return path


def _read_json_object(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("Ignoring %s for the model card: %s", file, error)
        return None
    if not isinstance(data, dict):
        logger.warning("Ignoring %s for the model card: expected a JSON object, got %s.", file, type(data).__name__)
        return None
    return data


def _from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The results in a `report.json` of an older output folder, as `DistillationResults` keys.

    Two layouts were written there: the flat one of these keys, and the `hf-distill` command's (metrics under
    `evaluation.<model>.metrics`, the speed under `speed`). This reading is frozen: the command now writes
    `distillation_results.json`, and the card no longer depends on how its report is laid out.
    """
    evaluation, speed = report.get("evaluation"), report.get("speed")
    if not isinstance(evaluation, dict):
        return report
    flat = {key: (evaluation.get(key) or {}).get("metrics") for key in _MODELS if key in evaluation}
    flat["metric"] = report.get("metric")
    if isinstance(speed, dict):
        flat["speedup"] = speed.get("latency_speedup")
        flat["latency"] = {k: speed.get(k) for k in ("device", "batch_size", "latency_samples") if k in speed}
    return {k: v for k, v in flat.items() if v is not None}


def load_results(directory: str | os.PathLike) -> DistillationResults | None:
    """The results saved in `directory`: `distillation_results.json`, else an older folder's `report.json`.

    `None` when neither is there, or the one there cannot be read (logged as a warning naming the file).
    """
    results_file, report_file = Path(directory) / RESULTS_NAME, Path(directory) / LEGACY_REPORT_NAME
    if results_file.is_file():
        data = _read_json_object(results_file)
    elif report_file.is_file():
        data = _read_json_object(report_file)
        data = None if data is None else _from_report(data)
    else:
        return None
    return None if data is None else DistillationResults.from_dict(data)
