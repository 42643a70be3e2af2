"""The teacher / student comparison written at the end of a run: `report.json` and `report.md`.

The arithmetic is in `compare` and `speedup`, pure functions of a few numbers; the rest lays them out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text

__all__ = ["REPORT_JSON", "REPORT_MD", "compare", "render_markdown", "speedup", "write_report"]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def compare(
    teacher: float, before: float, after: float, teacher_parameters: int, student_parameters: int
) -> dict[str, float | None]:
    """How much of the teacher the student kept, from one metric (higher is better) and the parameter counts.

    Args:
        teacher (`float`): the teacher's metric.
        before (`float`): the student's metric before distillation (as built, e.g. by `build_student`).
        after (`float`): the student's metric after distillation.
        teacher_parameters, student_parameters (`int`): parameter counts.

    Returns:
        `dict` with `retention = after / teacher`, `gap_closed = (after - before) / (teacher - before)` (the share
        of the teacher-student gap that distillation closed; `None` when there was no gap),
        `compression_ratio = teacher_parameters / student_parameters` and `parameter_reduction = 1 - 1 / ratio`.

    >>> compare(0.9, 0.5, 0.8, 100, 50)["gap_closed"]
    0.75
    """
    if teacher_parameters <= 0 or student_parameters <= 0:
        raise ValueError(
            f"parameter counts must be > 0, got teacher={teacher_parameters}, student={student_parameters}."
        )
    return {
        "teacher": teacher,
        "student_before": before,
        "student_after": after,
        "retention": after / teacher if teacher else None,
        "gap_closed": (after - before) / (teacher - before) if teacher != before else None,
        "compression_ratio": teacher_parameters / student_parameters,
        "parameter_reduction": 1 - student_parameters / teacher_parameters,
    }


def speedup(teacher_per_second: float, student_per_second: float) -> float | None:
    """Student throughput over teacher throughput (2.0: the student processes twice as many examples a second)."""
    if not teacher_per_second or teacher_per_second <= 0 or student_per_second is None:
        return None
    return student_per_second / teacher_per_second


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value: Any, digits: int | None = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits is None:
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_markdown(report: dict[str, Any]) -> str:
    """`report.md`: the comparison table, the ratios, the settings and how the numbers were measured."""
    teacher, student = report["teacher"], report["student"]
    evaluation, comparison, speed = report["evaluation"], report["comparison"], report["speed"]
    columns = ("teacher", "student_before", "student_after")
    lines = [f"# {report.get('title', 'Distillation report')}", ""]
    for note in report.get("notes", []):
        lines += [f"> {note}", ""]
    lines += [
        "| | teacher | student before distillation | student after distillation |",
        "| --- | --- | --- | --- |",
    ]
    for name in evaluation["teacher"]["metrics"]:
        lines.append(f"| {name} | " + " | ".join(_num(evaluation[c]["metrics"].get(name)) for c in columns) + " |")
    params = (teacher["num_parameters"], student["num_parameters"], student["num_parameters"])
    layers = (teacher["num_layers"], student["num_layers"], student["num_layers"])
    lines.append("| parameters | " + " | ".join(_num(p) for p in params) + " |")
    lines.append("| layers | " + " | ".join(_num(n) for n in layers) + " |")
    lines.append(
        f"| examples / s (batch {speed['batch_size']}) | "
        + " | ".join(_num(evaluation[c]["throughput"]["examples_per_second"], 1) for c in columns)
        + " |"
    )
    lines.append(
        "| latency, batch 1 (median ms) | "
        + " | ".join(_num(evaluation[c]["latency_batch_size_1"]["median_ms"], 2) for c in columns)
        + " |"
    )
    metric = report["metric"]
    lines += [
        "",
        f"- **Student relative to teacher** ({metric}): {_pct(comparison['retention'])}",
        f"- **Gap closed** by distillation: {_pct(comparison['gap_closed'])} (after - before) / (teacher - before)",
        f"- **Compression**: {_ratio(comparison['compression_ratio'])} fewer parameters "
        f"({_num(teacher['num_parameters'])} -> {_num(student['num_parameters'])}, "
        f"{_pct(comparison['parameter_reduction'])} smaller)",
        f"- **Speed-up** (student after vs teacher): {_ratio(speed['throughput_speedup'])} throughput at batch "
        f"{speed['batch_size']}, {_ratio(speed['latency_speedup'])} latency at batch 1",
        "",
        "## How this was measured",
        "",
        f"- Teacher: `{teacher['name_or_path']}` ({teacher['architecture']}).",
        f"- Student: {student['source']} ({student['architecture']}).",
    ]
    data = report.get("data", {})
    if data:
        lines.append(
            f"- Data: {data.get('description', '')} {_num(data.get('num_train'))} training and "
            f"{_num(data.get('num_eval'))} evaluation examples."
        )
    lines.append(
        f"- Speed: forward passes only, one model at a time on `{speed['device']}`, every batch of "
        f"{speed['batch_size']} of the evaluation set timed after one warm-up batch; latency is the median over "
        f"{speed['latency_samples']} single examples. On a shared machine these numbers vary from run to run."
    )
    training = report.get("training", {})
    if training:
        settings = training.get("settings", {})
        lines += ["", "## Training", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {_num(v, None)} |" for k, v in settings.items()]
    files = report.get("files")
    if files:
        lines += ["", "## Files", ""] + [f"- `{name}`: {what}" for name, what in files.items()]
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | os.PathLike, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `output_dir`, atomically; return their paths."""
    json_path, md_path = Path(output_dir) / REPORT_JSON, Path(output_dir) / REPORT_MD
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path
