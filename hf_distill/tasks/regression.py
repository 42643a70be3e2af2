"""Regression: one score per text or text pair (STS-B): `*ForSequenceClassification`, `problem_type="regression"`.

Logits `(B, K)` (`K = num_labels`, 1 for STS-B); the loss unit is the example. Both output terms are squared errors
(`hf_distill.losses.regression_loss`), so no temperature applies:

    loss_ce = mean_j (s_j - y_j)^2        (to the label)
    loss_kd = mean_j (s_j - t_j)^2        (to the teacher's prediction, as DistilBERT distils STS-B)

`temperature` is ignored (a warning says so when it differs from the recipe's). Metrics: `pearson` (primary),
`spearman`, `mse`. The teacher's predictions are cached per example. A model is this task when its
`config.problem_type` is `"regression"`, or unset with `num_labels=1` (as transformers reads it).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from .. import losses
from ..task_metrics import TaskMetrics, regression_scores
from ..teacher_cache import EXAMPLE_LOGITS
from .base import Task, Terms, register_task, summed_objective
from .text_columns import encode_texts, text_columns

__all__ = ["REGRESSION", "Regression"]

logger = logging.getLogger(__name__)


class Regression(Task):
    name = "regression"
    auto_class = "AutoModelForSequenceClassification"
    class_suffixes = ("ForSequenceClassification",)
    problem_type = "regression"
    description = "one score per text or text pair (STS-B): problem_type='regression', MSE to teacher and label"
    pipeline_tag = "text-classification"
    teacher_cache = EXAMPLE_LOGITS

    def check_arguments(self, args: Any) -> None:
        """The terms are squared errors: a temperature other than the recipe's is ignored, with a warning."""
        from ..recipes import resolve_loss_settings

        default = resolve_loss_settings(getattr(args, "recipe", None), {})["temperature"]
        if args.temperature != default:
            logger.warning("temperature=%s is ignored for regression: both output terms are squared errors to the "
                           "label and to the teacher's prediction, with no softmax to temper.",
                           args.temperature)  # fmt: skip

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        """Per example: squared error to the label and to the teacher's prediction (`temperature` unused)."""
        (predictions,) = student  # (B, K)
        terms: Terms = {}
        if self.has_labels(inputs):
            ce = losses.regression_loss(predictions, inputs["labels"], reduction="none")
            terms["loss_ce"] = (ce, torch.ones_like(ce))
        if teacher is not None:
            kd = losses.regression_loss(predictions, teacher[0], reduction="none")
            terms["loss_kd"] = (kd, torch.ones_like(kd))
        return terms, summed_objective(terms, weights, predictions.device)

    def metrics(self, config, references=None) -> TaskMetrics:
        return TaskMetrics(self, "pearson", config.num_labels)

    def preprocess_predictions(self, logits, labels):
        return logits[0] if isinstance(logits, (tuple, list)) else logits  # (B, K) predictions, not an argmax

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """`pearson`, `spearman` and `mse` (`hf_distill.task_metrics.regression_scores`)."""
        return regression_scores(predictions, label_ids)

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`sentence`/`text` (or a pair, e.g. STS-B's `sentence1`/`sentence2`) and a float `label` column."""
        return _regression(splits, args, tokenizer, config)


REGRESSION = register_task(Regression())


# ---- data for the hf-distill command ---------------------------------------------------------------------------


def float_labels(values: list, column: str, split: str) -> list[float]:
    """The label column as floats (numbers, or numeric strings: a csv column with one bad cell is read as strings);
    refuses other strings, booleans, missing and non-finite values, naming the first bad row."""
    numbers = []
    for row, value in enumerate(values):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ValueError(
                f"--task regression reads a float label column, but the {split} data's row {row} has "
                f"{column}={value!r} ({type(value).__name__}). Give every row a finite number (e.g. an STS-B score "
                "3.8), or name another column with --label_column."
            )
        numbers.append(number)
    return numbers


def _regression(splits, args, tokenizer, config):
    from transformers import DataCollatorWithPadding

    from ..task_data import TaskData, _limited, _require

    if config.num_labels != 1:
        raise ValueError(
            f"--task regression reads one float label per row, but the teacher has num_labels={config.num_labels}. "
            "Give a teacher with num_labels=1 and problem_type='regression' (STS-B style)."
        )
    encoded = {}
    for split, dataset in splits.items():
        text, text_pair = text_columns(args, dataset.column_names, split, REGRESSION.name)
        label = _require(split, dataset, "label_column", args.label_column, "label", "float label ('label')")
        labels = float_labels(dataset[label], label, split)
        dataset, labels = _limited(dataset, labels, args, split)
        encoded[split] = encode_texts(dataset, text, text_pair, labels, tokenizer, args.max_seq_length)
    spread = float(np.std(encoded["train"]["labels"]))
    if spread == 0:
        logger.warning("Every training label is %s: the hard-label term has nothing to learn.",
                       encoded["train"]["labels"][0])  # fmt: skip
    columns = {"text_column": text, "text_pair_column": text_pair, "label_column": label}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorWithPadding(tokenizer), columns)
