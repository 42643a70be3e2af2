"""Task heads: which logits each task distils, at which positions, and what one unit of the loss is.

| task | model class | logits distilled | unit of the loss |
| --- | --- | --- | --- |
| `sequence-classification` (single sentences and sentence pairs) | `*ForSequenceClassification` | `(B, C)` | example |
| `token-classification` | `*ForTokenClassification` | `(B, T, C)` where `labels != -100` and not padding | token |
| `question-answering` (extractive) | `*ForQuestionAnswering` | start and end `(B, T)` over real tokens | example |
| `masked-lm` | `*ForMaskedLM` | `(B, T, V)` at the masked positions (`labels != -100`) | token |
| `causal-lm` | `*ForCausalLM`, `*LMHeadModel` | next-token `(B, T-1, V)` where the next label is not `-100` | token |
| `seq2seq` | `*ForConditionalGeneration`, `*MTModel` | decoder `(B, T_target, V)` where `labels != -100` | token |
| `multiple-choice` | `*ForMultipleChoice` | `(B, C)` over the choices (inputs `(B, C, T)`) | example |
| `regression` | `*ForSequenceClassification` (`problem_type="regression"`) | `(B, 1)`, squared errors | example |
| `multi-label-classification` | same (`"multi_label_classification"`) | `(B, L)`, a sigmoid per label | example |
| `audio-classification` | `*ForAudioClassification`; wav2vec2's `*ForSequenceClassification` | `(B, C)` | example |
| `image-classification` | `*ForImageClassification` (ViT, ConvNeXt, ...) on `pixel_values` | `(B, C)` | example |

Token-level terms (cross-entropy and KD) are summed over the distilled tokens of the whole accumulated batch and
divided by their number, so a long sequence weighs as much per token as a short one and padding changes nothing;
the attention, hidden-state and relation terms stay per example.

Each task is one `Task` object in its own module (`hf_distill/tasks/<task>.py`), registered in `TASKS` by
`register_task` (see `hf_distill.tasks.base`). The functions below are the historical entry points; they ask the task.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import token_kd
from .base import TASKS, Task, Terms, batch_size, detect_task, get_task, register_task, task_of_class

# Importing a task's module registers it: this order is the order of TASKS and of --task's choices.
# isort: off
from .sequence_classification import SEQUENCE_CLASSIFICATION
from .token_classification import TOKEN_CLASSIFICATION
from .question_answering import QUESTION_ANSWERING
from .masked_lm import MASKED_LM
from .causal_lm import CAUSAL_LM
from .seq2seq import SEQ2SEQ
from .multiple_choice import MULTIPLE_CHOICE
from .regression import REGRESSION
from .multi_label import MULTI_LABEL_CLASSIFICATION
from .audio_classification import AUDIO_CLASSIFICATION
from .image_classification import IMAGE_CLASSIFICATION

# isort: on

__all__ = [
    "AUDIO_CLASSIFICATION",
    "CAUSAL_LM",
    "IMAGE_CLASSIFICATION",
    "MASKED_LM",
    "MULTIPLE_CHOICE",
    "MULTI_LABEL_CLASSIFICATION",
    "QUESTION_ANSWERING",
    "SEQ2SEQ",
    "REGRESSION",
    "SEQUENCE_CLASSIFICATION",
    "TASKS",
    "TOKEN_CLASSIFICATION",
    "Task",
    "batch_size",
    "detect_task",
    "get_task",
    "output_terms",
    "register_task",
    "task_logits",
    "task_of_class",
    "units_per_example",
]


def task_logits(task: Task, outputs: Any) -> tuple[torch.Tensor, ...]:
    """The logits the task distils: `(start_logits, end_logits)` for QA, `(logits,)` otherwise."""
    return task.logits(outputs)


def has_labels(task: Task, inputs: dict[str, Any]) -> bool:
    return task.has_labels(inputs)


def distilled_positions(task: Task, inputs: dict[str, Any]) -> torch.Tensor:
    """Per-token tasks: the `(B, T)` (causal LM: `(B, T-1)`) boolean mask of the positions that are distilled."""
    return task.distilled_positions(inputs)


def units_per_example(task: Task, inputs: dict[str, Any]) -> torch.Tensor:
    """`(B,)`: how many loss units each example holds (its distilled tokens, or 1 for example-level tasks)."""
    return task.units_per_example(inputs)


def output_terms(
    task: Task,
    student: tuple[torch.Tensor, ...] | token_kd.ProjectedLogits,
    teacher: tuple[torch.Tensor, ...] | token_kd.TopKTeacher | token_kd.ProjectedLogits | None,
    inputs: dict[str, Any],
    temperature: float,
    weights: dict[str, float] | None = None,
    training: bool = False,
) -> tuple[Terms, torch.Tensor]:
    """The task's output terms and their weighted sum.

    Returns:
        `(terms, objective)`. `terms` is `{"loss_ce": (sums, counts), "loss_kd": (sums, counts)}`, each `(B,)`:
        per-example sums over the loss units (for logging; they may be detached). `objective` is
        `sum_n weights[n] * sum(terms[n])` over the terms with a weight > 0, the value to differentiate.
        `loss_kd` is there when the teacher's outputs are given; `loss_ce` when the batch holds the targets, except
        for per-token tasks in training with `weights["loss_ce"] = 0` and `T != 1` (where it would cost a softmax
        of its own only to be logged; at `T = 1` it shares the KD term's and is always computed).
    """
    weights = {"loss_ce": 1.0, "loss_kd": 1.0} if weights is None else weights
    return task.output_terms(student, teacher, inputs, temperature, weights, training)
