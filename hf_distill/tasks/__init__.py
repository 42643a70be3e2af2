"""Task heads: which logits each task distils, at which positions, and what one unit of the loss is.

| task | model class | logits distilled | unit of the loss |
| --- | --- | --- | --- |
| `sequence-classification` (single sentences and sentence pairs) | `*ForSequenceClassification` | `(B, C)` | example |
| `token-classification` | `*ForTokenClassification` | `(B, T, C)` where `labels != -100` and not padding | token |
| `question-answering` (extractive) | `*ForQuestionAnswering` | start and end `(B, T)` over real tokens | example |
| `masked-lm` | `*ForMaskedLM` | `(B, T, V)` at the masked positions (`labels != -100`) | token |
| `causal-lm` | `*ForCausalLM`, `*LMHeadModel` | next-token `(B, T-1, V)` where the next label is not `-100` | token |

Token-level terms (cross-entropy and KD) are summed over the distilled tokens of the whole accumulated batch and
divided by their number, so a long sequence weighs as much per token as a short one and padding changes nothing;
the attention, hidden-state and relation terms stay per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import losses, token_kd

__all__ = [
    "TASKS",
    "Task",
    "batch_size",
    "detect_task",
    "get_task",
    "task_of_class",
    "output_terms",
    "task_logits",
    "units_per_example",
]


@dataclass(frozen=True)
class Task:
    """A supported task head."""

    name: str
    auto_class: str  # the transformers Auto class that loads a model with this head
    class_suffixes: tuple[str, ...]  # model class names of this head end with one of these
    label_names: tuple[str, ...]  # the batch keys holding the targets
    per_token: bool  # one loss unit per distilled token (else per example)
    description: str
    pipeline_tag: str  # the Hugging Face Hub's name for the task (model card metadata)


SEQUENCE_CLASSIFICATION = Task(
    "sequence-classification", "AutoModelForSequenceClassification", ("ForSequenceClassification",), ("labels",),
    False, "one label per text or text pair (SST-2, MNLI, ...)", "text-classification",
)  # fmt: skip
TOKEN_CLASSIFICATION = Task(
    "token-classification", "AutoModelForTokenClassification", ("ForTokenClassification",), ("labels",),
    True, "one label per token (NER, POS tagging)", "token-classification",
)  # fmt: skip
QUESTION_ANSWERING = Task(
    "question-answering", "AutoModelForQuestionAnswering", ("ForQuestionAnswering",),
    ("start_positions", "end_positions"), False, "extractive QA: the answer span's start and end (SQuAD)",
    "question-answering",
)  # fmt: skip
MASKED_LM = Task(
    "masked-lm", "AutoModelForMaskedLM", ("ForMaskedLM",), ("labels",),
    True, "masked language modelling: the masked tokens (BERT pre-training)", "fill-mask",
)  # fmt: skip
CAUSAL_LM = Task(
    "causal-lm", "AutoModelForCausalLM", ("ForCausalLM", "LMHeadModel"), ("labels",),
    True, "causal language modelling: the next token (GPT-2, Llama, Qwen2)", "text-generation",
)  # fmt: skip
_ALL = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING, MASKED_LM, CAUSAL_LM)
TASKS: dict[str, Task] = {task.name: task for task in _ALL}


def get_task(name: str) -> Task:
    """The task called `name` (one of `TASKS`), or a `ValueError` listing them."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not supported; choose one of {', '.join(TASKS)}.")
    return TASKS[name]


def task_of_class(class_name: str | None) -> Task | None:
    """The task whose head a model class name ends with (`BertForTokenClassification` -> token-classification)."""
    return next((t for t in TASKS.values() if class_name and class_name.endswith(t.class_suffixes)), None)


def detect_task(model: Any) -> Task:
    """The task of a model, from its class name (`BertForTokenClassification` -> `token-classification`)."""
    task = task_of_class(type(model).__name__)
    if task is not None:
        return task
    heads = ", ".join(suffix for task in TASKS.values() for suffix in task.class_suffixes)
    raise ValueError(
        f"cannot distil a {type(model).__name__}: hf-distill supports models whose class ends with {heads}. Load the "
        "teacher and the student with the Auto class of their task, e.g. AutoModelForSequenceClassification."
    )


def task_logits(task: Task, outputs: Any) -> tuple[torch.Tensor, ...]:
    """The logits the task distils: `(start_logits, end_logits)` for QA, `(logits,)` otherwise."""
    if task is QUESTION_ANSWERING:
        return outputs.start_logits, outputs.end_logits
    return (outputs.logits,)


def has_labels(task: Task, inputs: dict[str, Any]) -> bool:
    return all(inputs.get(name) is not None for name in task.label_names)


def _next_token_targets(inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: the token each position predicts, and where that prediction is distilled, both `(B, T-1)`."""
    labels, attention_mask = inputs.get("labels"), inputs.get("attention_mask")
    targets = (labels if labels is not None else inputs["input_ids"])[:, 1:]
    valid = targets.ne(losses.IGNORE_INDEX)
    if attention_mask is not None:  # both the predicting and the predicted token are real
        valid = valid & attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return targets, valid


def distilled_positions(task: Task, inputs: dict[str, Any]) -> torch.Tensor:
    """Per-token tasks: the `(B, T)` (causal LM: `(B, T-1)`) boolean mask of the positions that are distilled."""
    attention_mask, labels = inputs.get("attention_mask"), inputs.get("labels")
    if task is CAUSAL_LM:
        return _next_token_targets(inputs)[1]
    if task is MASKED_LM and labels is None:
        raise ValueError(
            "masked-lm distillation needs `labels` marking the masked positions (-100 elsewhere); batch them with "
            "DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)."
        )
    if labels is None:
        valid = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    else:
        valid = labels.ne(losses.IGNORE_INDEX)
    if attention_mask is not None:
        valid = valid & attention_mask.bool()
    return valid


def batch_size(inputs: dict[str, Any]) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    for value in inputs.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: the batch holds no tensors.")


def units_per_example(task: Task, inputs: dict[str, Any]) -> torch.Tensor:
    """`(B,)`: how many loss units each example holds (its distilled tokens, or 1 for example-level tasks)."""
    if task.per_token:
        return distilled_positions(task, inputs).sum(dim=1)
    return torch.ones(batch_size(inputs), dtype=torch.long)


def _span_ce(logits: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`(B,)` cross-entropy of start (or end) positions over the real tokens (padding is no candidate, so it
    changes nothing); positions outside the sequence (a truncated answer) are ignored, as in BERT."""
    ignored = logits.shape[1]
    positions = positions.view(-1).clamp(0, ignored)
    logits = logits.float()
    if attention_mask is not None:
        logits = logits.masked_fill(~attention_mask.to(logits.device).bool(), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, positions, reduction="none", ignore_index=ignored)


def output_terms(
    task: Task,
    student: tuple[torch.Tensor, ...] | token_kd.ProjectedLogits,
    teacher: tuple[torch.Tensor, ...] | token_kd.TopKTeacher | token_kd.ProjectedLogits | None,
    inputs: dict[str, Any],
    temperature: float,
    weights: dict[str, float] | None = None,
    training: bool = False,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
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
    if task.per_token:
        return _token_terms(task, student, teacher, inputs, temperature, weights, training)
    terms = _example_terms(task, student, teacher, inputs, temperature)
    objective = sum((weights[n] * values.sum() for n, (values, _) in terms.items() if weights[n] > 0),
                    torch.zeros((), device=student[0].device))  # fmt: skip
    return terms, objective


def _example_terms(task, student, teacher, inputs, temperature) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sequence classification and extractive QA: one value per example."""
    attention_mask = inputs.get("attention_mask")
    labelled = has_labels(task, inputs)
    terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if task is QUESTION_ANSWERING:
        if labelled:
            starts, ends = inputs["start_positions"], inputs["end_positions"]
            ce = (_span_ce(student[0], starts, attention_mask) + _span_ce(student[1], ends, attention_mask)) / 2
            terms["loss_ce"] = (ce, torch.ones_like(ce))
        if teacher is not None:
            start, end = (
                losses.position_soft_label_loss(s, t, attention_mask, temperature, reduction="none")
                for s, t in zip(student, teacher)
            )
            kd = (start + end) / 2
            terms["loss_kd"] = (kd, torch.ones_like(kd))
        return terms
    (logits,) = student
    if labelled:
        ce = losses.hard_label_loss(logits, inputs["labels"], reduction="none")
        terms["loss_ce"] = (ce, inputs["labels"].ne(losses.IGNORE_INDEX))
    if teacher is not None:
        kd = losses.soft_label_loss(logits, teacher[0], temperature, reduction="none")
        terms["loss_kd"] = (kd, torch.ones_like(kd))
    return terms


def _token_terms(task, student, teacher, inputs, temperature, weights, training):
    """Per-token tasks: KD and CE from one log-softmax per chunk of distilled rows (`hf_distill.token_kd`).

    The logits are read where they are, `(B, T, V)`: for the causal LM, position `i` predicts token `i + 1`, so the
    last position is simply not distilled (no shifted copy of the logits is made)."""
    if task is CAUSAL_LM:
        targets, valid = _next_token_targets(inputs)  # (B, T-1)
        targets = torch.nn.functional.pad(targets, (0, 1), value=losses.IGNORE_INDEX)  # (B, T)
        valid = torch.nn.functional.pad(valid, (0, 1), value=False)
    else:
        targets, valid = inputs.get("labels"), distilled_positions(task, inputs)
    labelled = has_labels(task, inputs)
    want_ce = labelled and (weights["loss_ce"] > 0 or not training or temperature == 1)
    if isinstance(teacher, tuple):
        teacher = teacher[0]
    if isinstance(student, token_kd.ProjectedLogits):
        projection = student
        result = token_kd.fused_token_output_loss(
            projection.hidden, projection.weight, projection.bias, teacher, targets if want_ce else None, valid,
            temperature, kd_weight=weights["loss_kd"], ce_weight=weights["loss_ce"],
        )  # fmt: skip
    else:
        result = token_kd.token_output_loss(
            student[0], teacher, targets if want_ce else None, valid, temperature,
            kd_weight=weights["loss_kd"], ce_weight=weights["loss_ce"],
        )  # fmt: skip
    counts = valid.sum(dim=1)
    terms = {}
    if result.ce is not None:
        terms["loss_ce"] = (result.ce.sum(dim=1), counts)
    if result.kd is not None:
        terms["loss_kd"] = (result.kd.sum(dim=1), counts)
    return terms, result.objective
