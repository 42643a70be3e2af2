"""Sequence classification: one label per text or text pair (SST-2, MNLI, ...), distilled per example.

Logits `(B, C)`; the loss unit is the example. The teacher's class logits can be cached per example. In the
`hf-distill` command, `--task sentence-pair` is this task on two text columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..task_metrics import load_metrics
from ..teacher_cache import EXAMPLE_LOGITS
from .base import Task, Terms, class_bound, class_terms, register_task

__all__ = ["SEQUENCE_CLASSIFICATION", "SequenceClassification"]

_PAIR_GUESSES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"))


class SequenceClassification(Task):
    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    class_suffixes = ("ForSequenceClassification",)
    label_bound = staticmethod(class_bound)  # the targets' ids are checked against it before training
    description = "one label per text or text pair (SST-2, MNLI, ...)"
    pipeline_tag = "text-classification"
    teacher_cache = EXAMPLE_LOGITS
    augments_text = True
    problem_type = "single_label_classification"  # the other problem types: tasks/regression.py, multi_label.py

    @property
    def command_names(self) -> tuple[str, ...]:
        return (self.name, "sentence-pair")

    def command_name(self, pair: bool) -> str:
        return "sentence-pair" if pair else self.name

    def check_models(self, student: Any, teacher: Any) -> None:
        """The losses are softmax cross-entropy and softmax KL, which need at least two classes."""
        for who, model in (("student", student), ("teacher", teacher)):
            config = getattr(model, "config", None)
            if getattr(config, "num_labels", 2) < 2:
                raise ValueError(
                    f"the {who} has num_labels={config.num_labels} with problem_type={config.problem_type!r}: "
                    "single-label classification (softmax cross-entropy and KL) needs num_labels >= 2. For a "
                    "regression head (one score per text) set problem_type='regression' on both models."
                )

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        """Per example: CE to the label (a `-100` label counts no unit) and KD to the teacher's class distribution."""
        labels = inputs["labels"] if self.has_labels(inputs) else None
        return class_terms(student[0], labels, teacher, temperature, weights)

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """`accuracy`, plus `f1` of label 1 when binary (`hf_distill.task_metrics.load_metrics`)."""
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        return {k: fn(predictions, label_ids) for k, fn in load_metrics(metrics.num_labels).items()}

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`sentence`/`text` (pairs: `sentence1`/`sentence2`, `question`/`sentence` or `premise`/`hypothesis`) and
        `label`, batched by `DataCollatorWithPadding`. `augment(train, text_columns)` adds training rows after every
        check of both splits and before tokenising: the `label` column holds the label ids (-100: none)."""
        return _sequence_classification(splits, args, tokenizer, config, pair=pair, augment=augment)


SEQUENCE_CLASSIFICATION = register_task(SequenceClassification())


# ---- data for the hf-distill command ---------------------------------------------------------------------------


def _pair_columns(args, columns: list[str], split: str) -> tuple[str, str]:
    if args.text_pair_column is None:
        guess = next(((a, b) for a, b in _PAIR_GUESSES if a in columns and b in columns), None)
        if guess is None:
            raise ValueError(
                f"--task sentence-pair needs two text columns, but the {split} data has columns {columns}, none of "
                f"the pairs {', '.join('/'.join(p) for p in _PAIR_GUESSES)}. Name them with --text_column and "
                "--text_pair_column."
            )
        return args.text_column or guess[0], guess[1]
    firsts = [a for a, _ in _PAIR_GUESSES] + ["sentence", "text"]
    return args.text_column or next((c for c in firsts if c in columns), None), args.text_pair_column


def _sequence_classification(splits, args, tokenizer, config, pair: bool, augment=None):
    from transformers import DataCollatorWithPadding

    from ..data import encode_labels, resolve_columns, tokenize
    from ..task_data import TaskData, _limited, _with

    checked = {}
    for split, dataset in splits.items():
        if pair:
            text, text_pair = _pair_columns(args, dataset.column_names, split)
            args_for_split = _with(args, text_column=text, text_pair_column=text_pair)
        else:
            args_for_split = args
            if args.text_column is None and not {"sentence", "text"} & set(dataset.column_names):
                if any(a in dataset.column_names and b in dataset.column_names for a, b in _PAIR_GUESSES):
                    raise ValueError(
                        f"no text column: the {split} data has columns {dataset.column_names}, which look like "
                        "sentence pairs. Pass --task sentence-pair, or name the text with --text_column."
                    )
        text, text_pair, label = resolve_columns(_with(args_for_split, label_column=args.label_column or "label"),
                                                 dataset, split)  # fmt: skip
        labels = encode_labels(dataset[label], config, split, require_all=split == "train")
        checked[split] = (*_limited(dataset, labels, args, split), text, text_pair)
    encoded = {}
    for split, (dataset, labels, text, text_pair) in checked.items():
        if augment is not None and split == "train":  # the training split only, after every check
            columns = [c for c in (text, text_pair) if c]
            dataset = augment(dataset.select_columns(columns).add_column("label", labels), columns)
            labels = dataset["label"]
        encoded[split] = tokenize(dataset, tokenizer, text, text_pair, labels, args.max_seq_length)
    columns = {"text_column": text, "text_pair_column": text_pair, "label_column": label}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorWithPadding(tokenizer), columns)
