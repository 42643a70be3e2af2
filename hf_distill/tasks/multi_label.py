"""Multi-label classification: any number of labels per text, a `*ForSequenceClassification` with
`problem_type="multi_label_classification"` (one sigmoid per label).

Logits `(B, L)`; the loss unit is the example. `loss_ce` is the binary cross-entropy to the multi-hot labels and
`loss_kd` the per-label sigmoid KD at temperature `T`, `T^2`-scaled (`hf_distill.losses.sigmoid_soft_label_loss`),
both averaged over the labels. Metrics: `micro_f1` (primary), `macro_f1`, `exact_match`, deciding each label at
probability 0.5 (logit 0). The teacher's logits are cached per example.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .. import losses
from ..task_metrics import TaskMetrics, multi_label_scores
from ..teacher_cache import EXAMPLE_LOGITS
from .base import Task, Terms, register_task, summed_objective
from .text_columns import encode_texts, text_columns

__all__ = ["MULTI_LABEL_CLASSIFICATION", "MultiLabelClassification"]

_LABEL_GUESSES = ("labels", "label")


class MultiLabelClassification(Task):
    name = "multi-label-classification"
    auto_class = "AutoModelForSequenceClassification"
    class_suffixes = ("ForSequenceClassification",)
    problem_type = "multi_label_classification"
    description = "any number of labels per text (one sigmoid each): problem_type='multi_label_classification'"
    pipeline_tag = "text-classification"
    teacher_cache = EXAMPLE_LOGITS

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        """Per example: BCE to the multi-hot labels and sigmoid KD to the teacher, each averaged over the labels."""
        (logits,) = student  # (B, L)
        terms: Terms = {}
        if self.has_labels(inputs):
            ce = losses.multi_label_hard_loss(logits, inputs["labels"], reduction="none")
            terms["loss_ce"] = (ce, torch.ones_like(ce))
        if teacher is not None:
            kd = losses.sigmoid_soft_label_loss(logits, teacher[0], temperature, reduction="none")
            terms["loss_kd"] = (kd, torch.ones_like(kd))
        return terms, summed_objective(terms, weights, logits.device)

    def metrics(self, config, references=None) -> TaskMetrics:
        return TaskMetrics(self, "micro_f1", config.num_labels)

    def preprocess_predictions(self, logits, labels):
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return (logits > 0).long()  # (B, L): probability > 0.5

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """`micro_f1`, `macro_f1`, `exact_match` (`hf_distill.task_metrics.multi_label_scores`)."""
        return multi_label_scores(predictions, label_ids)

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`sentence`/`text` (or a pair) and a list-of-labels column (`labels` or `label`: the teacher's label names
        or ids), turned into multi-hot float vectors."""
        return _multi_label(splits, args, tokenizer, config)


MULTI_LABEL_CLASSIFICATION = register_task(MultiLabelClassification())


# ---- data for the hf-distill command ---------------------------------------------------------------------------


def _label_list(cell: Any) -> list | None:
    """A list cell, or a csv/tsv string holding a JSON list (`["sports", "news"]`) or space-separated labels."""
    if isinstance(cell, str):
        stripped = cell.strip()
        if stripped.startswith("["):
            try:
                cell = json.loads(stripped)
            except json.JSONDecodeError:
                return None
        else:
            return stripped.split()
    return list(cell) if isinstance(cell, (list, tuple)) else None


def multi_hot(cells: list, config, column: str, split: str) -> list[list[float]]:
    """Each row's labels (names of the teacher's `id2label`, or ids) as a multi-hot vector of `num_labels` floats."""
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    vectors = []
    for row, cell in enumerate(cells):
        labels = _label_list(cell)
        if labels is None:
            raise ValueError(
                f"--task multi-label-classification reads a list of labels per row, but the {split} data's row {row} "
                f'has {column}={cell!r}. Write a list of the teacher\'s label names or ids, e.g. ["sports", '
                '"news"] (in csv/tsv: a JSON list or space-separated names), or [] for none.'
            )
        vector = [0.0] * config.num_labels
        for label in labels:
            index = label2id.get(str(label))  # a name first, else an id (an int, or digits in a csv cell)
            if index is None and isinstance(label, int) and not isinstance(label, bool):
                index = label
            elif index is None and isinstance(label, str) and label.isdigit():
                index = int(label)
            if index is None or not 0 <= index < config.num_labels:
                raise ValueError(
                    f"the {split} data's row {row} has label {label!r} in {column!r}, which the teacher does not know "
                    f"(num_labels={config.num_labels}, id2label={id2label}). Use its label names or ids "
                    f"0..{config.num_labels - 1}."
                )
            vector[index] = 1.0
        vectors.append(vector)
    return vectors


def _multi_label(splits, args, tokenizer, config):
    from transformers import DataCollatorWithPadding

    from ..task_data import TaskData, _limited, _require

    encoded = {}
    for split, dataset in splits.items():
        text, text_pair = text_columns(args, dataset.column_names, split, MULTI_LABEL_CLASSIFICATION.name)
        guess = next((c for c in _LABEL_GUESSES if c in dataset.column_names), None)
        label = _require(split, dataset, "label_column", args.label_column, guess,
                         "list-of-labels ('labels' or 'label')")  # fmt: skip
        labels = multi_hot(dataset[label], config, label, split)
        dataset, labels = _limited(dataset, labels, args, split)
        encoded[split] = encode_texts(dataset, text, text_pair, labels, tokenizer, args.max_seq_length)
    columns = {"text_column": text, "text_pair_column": text_pair, "label_column": label}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorWithPadding(tokenizer), columns)
