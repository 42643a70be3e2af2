"""Multiple choice (SWAG, HellaSwag, RACE, ARC): pick one of `C` endings of a context, distilled per example.

Inputs are `(B, C, T)` (one sequence per choice); the model runs them as a `(B * C, T)` batch and scores each
choice, giving logits `(B, C)`. The loss unit is the example: `loss_ce` is the cross-entropy of the right choice and
`loss_kd` Hinton's `T^2`-scaled KL between the teacher's and the student's softmax over the choices. The attention,
hidden-state and relation terms compare the layers on each of the `B * C` sequences (masked with the flattened
`(B * C, T)` attention mask) and average each example's choices, so an example weighs the same whatever its number
of choices. Metric: `accuracy`. The teacher's choice logits are cached per example.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from .. import losses
from ..task_metrics import accuracy
from ..teacher_cache import EXAMPLE_LOGITS
from .base import Task, Terms, batch_size, class_terms, register_task

__all__ = ["MULTIPLE_CHOICE", "MultipleChoice"]

_CONTEXT_GUESSES = ("context", "sent1", "question", "startphrase", "sentence", "text")
_LIST_GUESSES = ("endings", "choices", "options")
_ENDING = re.compile(r"^ending(\d+)$")


class MultipleChoice(Task):
    name = "multiple-choice"
    auto_class = "AutoModelForMultipleChoice"
    class_suffixes = ("ForMultipleChoice",)
    description = "pick one of several endings of a context (SWAG, RACE, ARC)"
    pipeline_tag = "multiple-choice"
    teacher_cache = EXAMPLE_LOGITS

    def layer_mask(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
        """`(B, C, T)` -> `(B * C, T)`: the layers run on one sequence per choice."""
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None or attention_mask.dim() != 3:
            return attention_mask
        return attention_mask.flatten(0, 1)

    def per_example(self, values: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """`(B * C,)` -> `(B,)`: the mean over each example's choices."""
        return values.view(batch_size(inputs), -1).mean(dim=1)

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        """Per example: CE of the right choice (a `-100` label counts no unit) and KD over the choices."""
        (logits,) = student  # (B, C)
        labels = inputs["labels"] if self.has_labels(inputs) else None
        if labels is not None:
            outside = labels.ne(losses.IGNORE_INDEX) & (labels.lt(0) | labels.ge(logits.shape[-1]))
            if outside.any():
                raise ValueError(
                    f"multiple-choice labels {sorted(set(labels[outside].tolist()))} are outside "
                    f"0..{logits.shape[-1] - 1}: the batch has {logits.shape[-1]} choices per example. The label is "
                    "the index of the right choice among the example's endings (-100: an unlabelled example)."
                )
        return class_terms(logits, labels, teacher, temperature, weights)

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """`accuracy` of the chosen ending."""
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        labelled = label_ids != losses.IGNORE_INDEX
        return {"accuracy": accuracy(predictions[labelled], label_ids[labelled])}

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """A context column, the endings (a list column or one column per ending) and the right ending's index;
        see `_choice_columns`. Batched by `DataCollatorForMultipleChoice`."""
        return _multiple_choice(splits, args, tokenizer)


MULTIPLE_CHOICE = register_task(MultipleChoice())


# ---- data for the hf-distill command ---------------------------------------------------------------------------


def _choice_columns(args, columns: list[str], split: str) -> tuple[str, list[str], str | None]:
    """`(context, endings, prefix)`. `--text_column`: the context (default `context`, `sent1`, `question`,
    `startphrase`, `sentence` or `text`). `--text_pair_column`: one list column holding each row's endings, or
    comma-separated ending columns (default `endings`/`choices`/`options`, else `ending0`, `ending1`, ...). In SWAG's
    own layout (`sent1`, `sent2`, `ending0..3`, no option given) each choice is `sent2 + " " + ending`, as in
    transformers' run_swag.py: `prefix` is then `"sent2"`."""
    context = args.text_column or next((c for c in _CONTEXT_GUESSES if c in columns), None)
    if context is None or context not in columns:
        problem = f"--text_column={args.text_column!r} is not a column" if args.text_column else "no context column"
        raise ValueError(f"{problem} of the {split} data (columns {columns}); name the context with --text_column.")
    if args.text_pair_column is not None:
        endings = [c.strip() for c in args.text_pair_column.split(",") if c.strip()]
        missing = [c for c in endings if c not in columns]
        if missing:
            raise ValueError(
                f"--text_pair_column={args.text_pair_column!r} names {missing}, not columns of the {split} data "
                f"({columns}). Give one list column of endings, or the ending columns separated by commas."
            )
    else:
        listed = next((c for c in _LIST_GUESSES if c in columns), None)
        numbered = sorted((int(m.group(1)), c) for c in columns if (m := _ENDING.match(c)))
        endings = [listed] if listed else [c for _, c in numbered]
        if not endings:
            raise ValueError(
                f"no endings in the {split} data (columns {columns}): name them with --text_pair_column, either one "
                "list column (e.g. 'endings') or the ending columns separated by commas (e.g. 'ending0,ending1')."
            )
    swag = args.text_column is None and args.text_pair_column is None and context == "sent1" and "sent2" in columns
    return context, endings, "sent2" if swag else None


def _choices(dataset, endings: list[str], prefix: str | None, split: str) -> list[list[str]]:
    """Each row's choices as strings, all rows with the same number of them."""
    if len(endings) == 1:  # a list column
        rows = []
        for row, cell in enumerate(dataset[endings[0]]):
            if not isinstance(cell, (list, tuple)) or len(cell) < 2:
                raise ValueError(
                    f"the {split} data's row {row} has {endings[0]}={cell!r}; a list column of endings holds at least "
                    "two strings per row (or name several ending columns, comma-separated, with --text_pair_column)."
                )
            rows.append([str(c) for c in cell])
    else:
        rows = [[str(c) for c in choice] for choice in zip(*(dataset[c] for c in endings))]
    if prefix is not None:
        rows = [[f"{start} {c}" for c in choices] for start, choices in zip(dataset[prefix], rows)]
    counts = {len(choices) for choices in rows}
    if len(counts) > 1:
        raise ValueError(
            f"the {split} data's rows have different numbers of endings ({sorted(counts)}): give every row the same "
            "number of choices (pad with an impossible ending if needed)."
        )
    return rows


def _choice_labels(values: list, num_choices: int, column: str, split: str) -> list[int]:
    labels = []
    for row, value in enumerate(values):
        integral = isinstance(value, int) or (isinstance(value, float) and float(value).is_integer())
        if isinstance(value, bool) or not integral or not 0 <= int(value) < num_choices:
            raise ValueError(
                f"the {split} data's row {row} has {column}={value!r}, but a multiple-choice label is the index of "
                f"the right ending, an integer in 0..{num_choices - 1} (the data has {num_choices} endings per row)."
            )
        labels.append(int(value))
    return labels


def _multiple_choice(splits, args, tokenizer):
    from datasets import Dataset
    from transformers import DataCollatorForMultipleChoice

    from ..task_data import TaskData, _limited, _require

    checked, num_choices = {}, None
    for split, dataset in splits.items():
        context, endings, prefix = _choice_columns(args, dataset.column_names, split)
        label = _require(split, dataset, "label_column", args.label_column, "label", "label (the right ending)")
        choices = _choices(dataset, endings, prefix, split)
        if num_choices is not None and len(choices[0]) != num_choices:
            raise ValueError(f"the train data has {num_choices} endings per row but the {split} data "
                             f"{len(choices[0])}: both splits need the same number of choices.")  # fmt: skip
        num_choices = len(choices[0])
        labels = _choice_labels(dataset[label], num_choices, label, split)
        dataset, labels = _limited(dataset, labels, args, split)
        checked[split] = ([str(c) for c in dataset[context]], choices[: len(dataset)], labels)
    encoded = {}
    for split, (contexts, choices, labels) in checked.items():
        firsts = [c for c in contexts for _ in range(num_choices)]
        seconds = [ending for row in choices for ending in row]
        flat = tokenizer(firsts, seconds, truncation=True, max_length=args.max_seq_length)
        grouped = {k: [v[i : i + num_choices] for i in range(0, len(v), num_choices)] for k, v in flat.items()}
        encoded[split] = Dataset.from_dict({**grouped, "labels": labels})
    columns = {"text_column": context, "text_pair_column": ",".join(endings), "label_column": label}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorForMultipleChoice(tokenizer), columns)
