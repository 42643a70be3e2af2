"""`training_curves.png`: total loss, the loss terms, the task's eval metric and learning rate against the step.

matplotlib is optional (`pip install "hf-distill[plots]"`): without it `plot_training_curves` returns the reason
instead of a file, and the run goes on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..artifacts import atomic_open
from ..terms import registered_terms

__all__ = ["PLOT_NAME", "plot_training_curves"]

PLOT_NAME = "training_curves.png"


def _terms() -> list[tuple[str, str]]:
    """`(logged key, label)` of every registered loss term (`hf_distill.terms`)."""
    return [(term.name, term.label) for term in registered_terms()]


def _series(entries: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(e["step"], e[key]) for e in entries if key in e and e.get("step") is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(
    history: dict[str, list[dict[str, Any]]],
    path: str | os.PathLike,
    metric: str = "accuracy",
    teacher_metric: float | None = None,
    student_before_metric: float | None = None,
) -> tuple[Path | None, str | None]:
    """Draw the training curves of `history` (as in `training_history.json`) into `path`.

    Args:
        history (`dict`): `{"train": [...], "eval": [...]}` entries of `Trainer.state.log_history`.
        path (`str` or `os.PathLike`): the PNG to write.
        metric (`str`, *optional*, defaults to `"accuracy"`): the eval metric to plot (`eval_<metric>`).
        teacher_metric, student_before_metric (`float`, *optional*): drawn as reference lines in the metric panel.

    Returns:
        `(path, None)` when the plot was written, `(None, reason)` when it was not.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        return None, f"matplotlib is not installed ({error}); pip install 'hf-distill[plots]' to get the plot"
    train, evaluation = history.get("train", []), history.get("eval", [])
    if not train and not evaluation:
        return None, "no training or evaluation logs to plot (was anything logged? see --logging_steps)"

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    ax.plot(*_series(train, "loss"), marker=".", label="training loss (weighted sum)")
    if any("eval_distillation_loss" in e for e in evaluation):
        ax.plot(*_series(evaluation, "eval_distillation_loss"), marker="o", label="eval distillation loss")
    ax.set_title("Total loss")

    ax = axes[0][1]
    for key, label in _terms():
        steps, values = _series(train, key)
        if steps:
            ax.plot(steps, values, marker=".", label=label)
    if all(v > 0 for key, _ in _terms() for v in _series(train, key)[1]) and train:
        ax.set_yscale("log")
    ax.set_title("Loss terms, unweighted (training)")

    ax = axes[1][0]
    steps, values = _series(evaluation, f"eval_{metric}")
    if steps:
        ax.plot(steps, values, marker="o", label="student")
    if teacher_metric is not None:
        ax.axhline(teacher_metric, color="black", linestyle="--", label="teacher")
    if student_before_metric is not None:
        ax.axhline(student_before_metric, color="grey", linestyle=":", label="student before distillation")
    ax.set_title(f"Eval {metric}")

    ax = axes[1][1]
    ax.plot(*_series(train, "learning_rate"), marker=".")
    ax.set_title("Learning rate")

    for ax in (a for row in axes for a in row):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as handle:  # never a half-written PNG
        figure.savefig(handle, dpi=110, format="png")
    plt.close(figure)
    return path, None
