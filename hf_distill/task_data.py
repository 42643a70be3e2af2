"""Per-task data for the `hf-distill` command: which task runs, which columns it reads, how they become batches.

Each task prepares its own data (`Task.prepare_data`, in `hf_distill/tasks/<task>.py`); this module resolves the
task, loads the splits, runs the checks every task shares and holds the helpers the tasks' preparations use.

| task | columns (defaults) | batches |
| --- | --- | --- |
| `sequence-classification` | `sentence`/`text`, `label` | `DataCollatorWithPadding` |
| `sentence-pair` | `sentence1`/`sentence2`, `question`/`sentence` or `premise`/`hypothesis`; `label` | same |
| `token-classification` | `tokens` (word lists), `ner_tags`/`labels`/`label` (per word) | `...TokenClassification` |
| `question-answering` | `question`, `context`, `answers` (SQuAD); a long context in windows | `...WithPadding` |
| `masked-lm` | `sentence`/`text` | `DataCollatorForLanguageModeling`; the evaluation set masked once |
| `causal-lm` | `sentence`/`text` | `DataCollatorForLanguageModeling(mlm=False)` |
| `audio-classification` | `audio`/`file`/`path` (WAV paths or an `Audio` feature), `label` | `audio.AudioCollator` |
| `image-classification` | `image` (`Image` feature or file paths), `label` | `default_data_collator` |

Every check (columns, labels, answer spans) reads the whole files before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset

from .data import DataArguments, load_split, resolve_columns
from .task_metrics import QAReferences
from .tasks import SEQUENCE_CLASSIFICATION, TASKS, Task, task_of_class

__all__ = ["TASK_CHOICES", "TaskData", "prepare_task_data", "resolve_task"]

logger = logging.getLogger(__name__)

TASK_CHOICES = (*TASKS, *(alias for task in TASKS.values() for alias in task.command_names[1:]))  # sentence-pair
DEFAULT_TASK = SEQUENCE_CLASSIFICATION  # when neither --task nor the teacher's architectures name one


def resolve_task(name: str | None, teacher_config) -> tuple[Task, bool]:
    """`(task, sentence_pair)` from `--task`, or from the teacher's `config.architectures` when it is not given.

    A `--task` value other than the task's own name (`sentence-pair`) runs the task on two text columns."""
    architectures = getattr(teacher_config, "architectures", None) or []
    found = {task_of_class(a, teacher_config) for a in architectures}  # problem_type picks among shared heads
    detected = next((t for t in TASKS.values() if t in found), None)
    if name is not None:
        task = next(t for t in TASKS.values() if name in t.command_names)
        if detected is not None and detected is not task:
            raise ValueError(
                f"--task={name!r}, but the teacher is a {architectures[0]} ({detected.name}): loaded for {name} its "
                f"head would be random. Give a teacher fine-tuned for {name}, or drop --task to run {detected.name}."
            )
        return task, name != task.name
    if detected is not None:
        logger.info("Task %s, from the teacher's architecture %s.", detected.name, architectures[0])
        return detected, False
    logger.info("The teacher's config.architectures=%s names no task head: running %s (pass --task to choose "
                "another).", architectures, DEFAULT_TASK.name)  # fmt: skip
    return DEFAULT_TASK, False


@dataclass
class TaskData:
    """Tokenised training and evaluation sets and their collator; `references` for question answering."""

    train: Dataset
    evaluation: Dataset
    collator: Callable
    columns: dict[str, str | None]  # text_column, text_pair_column, label_column as used
    references: QAReferences | None = None
    augmentation: dict | None = None  # how the training split is augmented as it is read (images), for the record
    uncacheable: str | None = None  # why the teacher's outputs on the training split cannot be cached, if they cannot


def prepare_task_data(
    task: Task,
    pair: bool,
    args: DataArguments,
    tokenizer,
    teacher_config,
    augment: Callable[[Dataset, list[str]], Dataset] | None = None,
) -> TaskData:
    """Load, check and tokenise both splits for `task`. Raises `ValueError` naming the column or option to fix.

    `augment(train, text_columns)`, for sequence classification (and pairs) only, adds rows to the training split
    after every check of both splits and before tokenising: the `label` column holds the label ids (-100: none).
    """
    name = task.command_name(pair)
    splits = {split: load_split(args, split) for split in ("train", "validation")}
    if task.needs_fast_tokenizer and not tokenizer.is_fast:
        raise ValueError(
            f"--task {name} maps words and answers to tokens through a fast tokenizer's offsets, but "
            f"{type(tokenizer).__name__} is a slow one. Save the teacher's tokenizer with use_fast=True (a "
            "tokenizer.json) and pass it with --tokenizer_name."
        )
    if augment is not None and not task.augments_text:
        supported = ", ".join(n for t in TASKS.values() if t.augments_text for n in t.command_names)
        raise ValueError(f"--augment makes sentence variants for {supported}; --task {name} is not supported: drop "
                         "--augment.")  # fmt: skip
    return task.prepare_data(splits, args, tokenizer, teacher_config, pair=pair, augment=augment)


def _limited(dataset: Dataset, values: list, args: DataArguments, split: str) -> tuple[Dataset, list]:
    """The first `--max_train_samples` / `--max_eval_samples` rows of `dataset` and of the per-row `values`."""
    limit = args.max_train_samples if split == "train" else args.max_eval_samples
    if limit is not None and limit < len(dataset):
        return dataset.select(range(limit)), values[:limit]
    return dataset, values


def _require(split: str, dataset: Dataset, option: str, given: str | None, default: str | None, what: str) -> str:
    """The column named by `--option` (`given`), else `default`; an error naming the option when it is missing."""
    name = given or default
    if name is None or name not in dataset.column_names:
        problem = f"--{option}={given!r} is not a column of the {split} data" if given else f"no {what} column"
        raise ValueError(f"{problem}; its columns are {dataset.column_names}. Name it with --{option}.")
    return name


def _refuse(args: DataArguments, task: str, options: tuple[str, ...]) -> None:
    for option in options:
        if getattr(args, option) is not None:
            raise ValueError(f"--{option}={getattr(args, option)!r} has no use with --task {task}: drop it.")


def _with(args: DataArguments, **changes) -> DataArguments:
    return dataclasses.replace(args, **changes)


def _texts(splits, args: DataArguments, tokenizer, task: str) -> tuple[dict[str, Dataset], str]:
    """One text column per split (`sentence`/`text` or `--text_column`), tokenised: the language models' data."""
    _refuse(args, task, ("text_pair_column", "label_column"))
    encoded = {}
    for split, dataset in splits.items():
        text = resolve_columns(_with(args, label_column=None), dataset, split)[0]
        dataset, _ = _limited(dataset, [], args, split)
        encoding = tokenizer([str(t) for t in dataset[text]], truncation=True, max_length=args.max_seq_length)
        encoded[split] = Dataset.from_dict(dict(encoding))
    return encoded, text
