"""Checks that run before any training work: the teacher/student pair, the tokenizer, the datasets, the checkpoint.

Each check raises `ValueError` naming the argument, the bad value and the fix. `DistillationTrainer` calls
`check_models` in `__init__` and `before_train` at the start of `train()` (which also runs the checkpoint checks of
`resume.py`), so a bad run fails in seconds instead of after the first step or the first evaluation. Dataset scans
read whole columns through Arrow (lengths, minimum, maximum), never row by row, so they stay cheap on large
datasets; datasets that are not `datasets.Dataset` are checked as far as they can be without iterating them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .labels import IGNORE_INDEX, LABEL_COLUMNS
from .modeling import embedding_rows
from .resume import check_resume_settings, resolve_checkpoint

if TYPE_CHECKING:
    from .args import DistillationArguments
    from .artifacts import DistillationRecord
    from .tasks import Task

__all__ = [
    "before_train",
    "check_dataset",
    "check_models",
    "check_same_labels",
    "check_tokenizer_fits",
    "parse_config_file",
]

logger = logging.getLogger(__name__)


# ---- the teacher / student pair and the tokenizer ------------------------------------------------------------


def _id2label(model: nn.Module) -> dict[int, str]:
    mapping = getattr(getattr(model, "config", None), "id2label", None) or {}
    return {int(k): str(v) for k, v in mapping.items()}


def _tokenizer_size(processing_class: Any) -> int | None:
    tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps its tokenizer
    if tokenizer is None or not hasattr(tokenizer, "convert_tokens_to_ids"):
        return None
    try:
        return len(tokenizer)
    except TypeError:
        return None


def check_same_labels(student: nn.Module, teacher: nn.Module, strict: bool = False) -> None:
    """Both models predict the same label set, with the same names where both name their classes.

    With `strict=False` (the trainer) a model with only the default `LABEL_i` names is unnamed, not contradictory:
    a warning. With `strict=True` (the command, whose student was saved by someone for some task) it is refused.
    """
    s_labels = getattr(getattr(student, "config", None), "num_labels", None)
    t_labels = getattr(getattr(teacher, "config", None), "num_labels", None)
    if s_labels is not None and t_labels is not None and s_labels != t_labels:
        raise ValueError(
            f"teacher has num_labels={t_labels} but the student has num_labels={s_labels}: they must predict the "
            "same label set. Build the student with the teacher's num_labels, id2label and label2id."
        )
    s_names, t_names = _id2label(student), _id2label(teacher)
    if not (s_names and t_names) or s_names == t_names:
        return
    generic = [names for names in (s_names, t_names) if all(v == f"LABEL_{k}" for k, v in names.items())]
    if generic and not strict:
        logger.warning(
            "teacher id2label=%s but student id2label=%s: copy the teacher's id2label and label2id into the "
            "student config so the saved student names its classes.",
            t_names,
            s_names,
        )
        return
    raise ValueError(
        f"the student's labels (id2label={s_names}) differ from the teacher's (id2label={t_names}): class i must mean "
        "the same thing in both models, or the student learns swapped labels. Build the student with the teacher's "
        "id2label and label2id (e.g. config.id2label = teacher.config.id2label)."
    )


def check_tokenizer_fits(
    processing_class: Any,
    model: nn.Module,
    who: str,
    option: str = "`processing_class`",
    fix: str = "Use the tokenizer the teacher was trained with, or call resize_token_embeddings(len(tokenizer)) on "
    "both models.",
) -> None:
    """The tokenizer's ids all index `model`'s input embedding (`option` and `fix` word the error for the caller)."""
    size = _tokenizer_size(processing_class)
    rows = embedding_rows(model) if size is not None else None
    if rows is not None and size > rows:
        raise ValueError(
            f"{option}: the tokenizer has {size} tokens (len(tokenizer)) but the {who}'s input embedding has only "
            f"{rows} rows, so token ids past the end would crash or read garbage. {fix}"
        )


def check_models(student: nn.Module, teacher: nn.Module, processing_class: Any = None) -> None:
    """Check that teacher and student predict the same labels and read the same vocabulary, which the tokenizer fits.

    The one place for these teacher/student invariants (the layer map and the loss terms' needs are checked where
    they are resolved, in the trainer).

    Raises:
        `ValueError` when the models' label sets differ (`num_labels`, or `id2label` when both name their classes),
        their `vocab_size` differs, or `processing_class` produces token ids past the end of either embedding.
    """
    check_same_labels(student, teacher)
    s_vocab = getattr(getattr(student, "config", None), "vocab_size", None)
    t_vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
    reads_ids = getattr(student, "main_input_name", "input_ids") == "input_ids"  # wav2vec2's vocab_size is CTC's
    if reads_ids and s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
        raise ValueError(
            f"teacher vocab_size={t_vocab} differs from student vocab_size={s_vocab}: both models read the same "
            "input_ids, so they need the same tokenizer. Build the student from the teacher (build_student)."
        )
    for who, model in (("student", student), ("teacher", teacher)):
        check_tokenizer_fits(processing_class, model, who)


# ---- datasets ----------------------------------------------------------------------------------------------


class _Recheck(Exception):
    """A finding on a dataset's whole table that must be confirmed on its selected rows."""


def _scan_column(dataset: Any, column: str, check: Callable[..., None]) -> None:
    """Run `check(array, exact)` on a column of a `datasets.Dataset`, cheaply.

    After `shuffle`/`select`/`train_test_split` a dataset is a row selection over a larger Arrow table, and
    gathering the selected rows costs seconds on large datasets. The whole table (a superset) is scanned first,
    in milliseconds; only a finding there is confirmed on the exact rows, so the result is exact either way.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return
    if not isinstance(dataset, datasets.Dataset) or column not in dataset.column_names:
        return
    if getattr(dataset, "_indices", None) is None:
        check(dataset.data.column(column), True)
        return
    try:
        check(dataset.data.column(column), False)
    except (ValueError, _Recheck):
        check(dataset.with_format("arrow")[column], True)


def _position_limit(model: nn.Module) -> tuple[int | None, bool]:
    """How many positions `model` can read, and whether that is a hard limit (a learned position table)."""
    base = getattr(model, "base_model", model)
    table = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    if table is None:
        table = getattr(base, "wpe", None)  # GPT-2
    if isinstance(table, nn.Embedding):
        limit = table.num_embeddings
        if table.padding_idx is not None:  # RoBERTa numbers positions from padding_idx + 1 (514 rows -> 512 tokens)
            limit -= table.padding_idx + 1
        return limit, True
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None), False


def _label_bound(model: nn.Module) -> tuple[str, int] | None:
    """(`name`, n): labels must lie in 0..n-1 (or be -100), as the model's task says (`Task.label_bound`)."""
    from .tasks import task_of_class

    main_input = getattr(model, "main_input_name", None)
    task = task_of_class(type(model).__name__, getattr(model, "config", None),
                         main_input if isinstance(main_input, str) else None)  # fmt: skip
    return task.label_bound(model) if task is not None else None


@contextmanager
def _rng_preserved():
    """Run a collator without moving any random state, so that checking does not change the training run."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _collated_keys(dataset: Any, collate: Callable | None, keep: set[str] | None) -> set[str] | None:
    """Keys of the batch the collator makes from the first example, or None when that cannot be tried cheaply."""
    if collate is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    try:
        example = dataset[0]
        if keep is not None and isinstance(example, Mapping):
            example = {k: v for k, v in example.items() if k in keep}
        with _rng_preserved():
            batch = collate([example])
    except Exception:  # the collator may need things we do not replicate; the column check still applies
        return None
    return set(batch) if isinstance(batch, Mapping) else None


def _check_labels(column, exact: bool, name: str, label_column: str, models: Mapping[str, nn.Module]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    nested = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    values = pc.list_flatten(column) if nested else column  # token classification: one label per token
    bound = next(((who, b) for who, m in models.items() if (b := _label_bound(m)) is not None), None)
    if bound is None:
        return
    who, (field_name, n) = bound
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        sample = pc.unique(values).to_pylist()[:3]
        raise ValueError(
            f"{name} column {label_column!r} holds strings ({', '.join(map(repr, sample))}), but the {who} expects "
            f"class indices 0..{n - 1}. Map them with the model's label2id, e.g. "
            f"dataset.map(lambda r: {{'{label_column}': label2id[r['{label_column}']]}})."
        )
    if not pa.types.is_integer(values.type):
        return  # floats: soft or regression targets, nothing to range-check
    values = pc.filter(values, pc.not_equal(values, IGNORE_INDEX))
    bad = pc.filter(values, pc.or_(pc.less(values, 0), pc.greater_equal(values, n)))
    if len(bad):
        sample = sorted(pc.unique(bad).to_pylist())[:5]
        raise ValueError(
            f"{name} column {label_column!r} holds label values {sample} outside the {who}'s label set 0..{n - 1} "
            f"({field_name}={n}; -100 marks an ignored label). Remap the labels to 0..{n - 1}, or build both models "
            f"with {field_name}={max(sample) + 1} if the data has more classes."
        )


def _check_input_ids(column, exact: bool, name: str, models: Mapping[str, nn.Module]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    if not (listed or pa.types.is_fixed_size_list(column.type)) or not pa.types.is_integer(column.type.value_type):
        return  # not one token sequence per row (e.g. multiple choice): nothing cheap to check
    lengths = pc.list_value_length(column)
    longest = pc.max(lengths).as_py() or 0
    for who, model in models.items():
        limit, hard = _position_limit(model)
        if limit is not None and longest > limit:
            row = pc.index(lengths, longest).as_py()
            message = (
                f"{name} row {row} has {longest} tokens but the {who} reads at most {limit} positions "
                f"(max_position_embeddings). Truncate when tokenizing: tokenizer(..., truncation=True, "
                f"max_length={limit})."
            )
            if hard:
                raise ValueError(message)
            if not exact:
                raise _Recheck(message)
            logger.warning(message)
    ids = pc.min_max(pc.list_flatten(column)).as_py()
    if ids["min"] is None:
        return
    for who, model in models.items():
        rows = embedding_rows(model)
        if ids["min"] < 0 or (rows is not None and ids["max"] >= rows):
            raise ValueError(
                f"{name} `input_ids` span {ids['min']}..{ids['max']} but the {who}'s input embedding has {rows} rows "
                "(valid ids 0..{}): the data was tokenized with a different tokenizer than the models'. Tokenize "
                "with the teacher's tokenizer.".format((rows or 1) - 1)
            )


def check_dataset(
    dataset: Any,
    name: str,
    models: Mapping[str, nn.Module],
    require_labels: bool = False,
    collate: Callable | None = None,
    keep_columns: set[str] | None = None,
    label_names: tuple[str, ...] = ("labels",),
) -> None:
    """Check a dataset before training: not empty, labels present if needed and in range, sequences that fit.

    Args:
        dataset: a `datasets.Dataset` (fully checked), or any other dataset (checked as far as possible cheaply).
        name (`str`): how the error names it, e.g. `"train_dataset"`.
        models (`Mapping[str, nn.Module]`): `{"student": ..., "teacher": ...}`; limits come from each.
        require_labels (`bool`): the hard-label loss is on (`alpha > 0`), or the task finds its distilled positions
            in the labels (masked LM), so batches must carry `label_names`.
        collate (`Callable`, *optional*): the data collator; batches are judged on what it makes of one example,
            since collators may create labels (language modelling) or rename `label` to `labels`.
        keep_columns (`set[str]`, *optional*): the columns `Trainer` keeps (the others are dropped before collating).
        label_names (`tuple[str, ...]`): the batch keys of the task's targets (`start_positions`, `end_positions`
            for question answering).

    Raises:
        `ValueError` naming the dataset, the bad value and the fix.
    """
    if dataset is None:
        return
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{name} is empty (0 rows): check the split name, file path and any filter() before it.")
    columns = set(getattr(dataset, "column_names", None) or [])
    if require_labels:
        keys = _collated_keys(dataset, collate, keep_columns)
        found = keys if keys is not None else columns
        if keys is None and label_names == ("labels",):  # judged by columns: 'label' becomes `labels` in the collator
            has_labels = bool(found & set(LABEL_COLUMNS))
        else:
            has_labels = set(label_names) <= found
        if not has_labels and not (keys is None and not columns):  # no keys and no columns: nothing to judge by
            found = sorted(found)
            wanted = " and ".join(f"`{n}`" for n in label_names)
            raise ValueError(
                f"alpha > 0 weights the hard-label loss (and masked LM finds its masked positions in the labels), but "
                f"the batches built from {name} have no {wanted} (they hold: {', '.join(found)}). Add the target "
                "column(s) (a 'label' column is renamed 'labels'), or set alpha=0 to distil from the teacher alone; "
                "for masked LM batch with DataCollatorForLanguageModeling."
            )
    label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
    if label_column is not None:
        check_labels = partial(_check_labels, name=name, label_column=label_column, models=models)
        _scan_column(dataset, label_column, check_labels)
    _scan_column(dataset, "input_ids", partial(_check_input_ids, name=name, models=models))


def before_train(
    student: nn.Module,
    teacher: nn.Module,
    args: DistillationArguments,
    task: Task,
    train_dataset: Any,
    eval_dataset: Any,
    data_collator: Callable | None,
    keep_columns: set[str] | None,
    resume_from_checkpoint: str | bool | None,
    record: Callable[[], DistillationRecord],
) -> str | None:
    """Everything `DistillationTrainer.train()` checks before the first step; returns the checkpoint to resume.

    Args:
        student, teacher (`nn.Module`): the unwrapped models; limits (positions, vocabulary, labels) come from each.
        args (`DistillationArguments`): the run's arguments (`alpha`, `output_dir`, the resume options).
        task (`Task`): the models' task, for its label names (masked LM always needs its labels).
        train_dataset, eval_dataset: as given to the trainer (`eval_dataset` may be a dict of datasets).
        data_collator (`Callable`, *optional*): batches are judged on what it makes of one example.
        keep_columns (`set[str]`, *optional*): the columns `Trainer` keeps (`remove_unused_columns`).
        resume_from_checkpoint (`str` or `bool`, *optional*): as given to `train()`; resolved by `resume.py`.
        record (`Callable[[], DistillationRecord]`): this run's record, built only when a checkpoint is resumed.
    """
    models = {"student": student, "teacher": teacher}
    require_labels = args.alpha > 0 or task.labels_mark_positions  # masked LM finds its masked positions in the labels
    check_dataset(train_dataset, "train_dataset", models, require_labels, data_collator, keep_columns,
                  task.label_names)  # fmt: skip
    evals = eval_dataset if isinstance(eval_dataset, Mapping) else {None: eval_dataset}
    for key, dataset in evals.items():
        check_dataset(dataset, "eval_dataset" if key is None else f"eval_dataset[{key!r}]", models)
    checkpoint = resolve_checkpoint(resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        check_resume_settings(checkpoint, record(), args.allow_resume_with_different_settings)
    return checkpoint


# ---- config files ------------------------------------------------------------------------------------------


def parse_config_file(path: str | os.PathLike, dataclass_types: Any = None) -> tuple[Any, ...]:
    """Parse a JSON or YAML config into `DistillationArguments` (or `dataclass_types`), refusing unknown keys.

    YAML is read with `yaml.safe_load`, so no tag in the file can construct objects or run code. A mistyped key
    raises with the closest valid name, e.g. `'temprature' (did you mean 'temperature'?)`.

    >>> (args,) = parse_config_file("distill.yaml")  # doctest: +SKIP
    """
    import yaml
    from transformers import HfArgumentParser

    from .args import DistillationArguments

    parser = HfArgumentParser(dataclass_types or DistillationArguments)
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of argument names to values.")
    known = sorted({f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init})
    unknown = sorted(set(data) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ValueError(
            f"config file {str(path)!r} has unknown keys: {', '.join(hints)}. Fix the spelling or remove them; "
            "valid keys are the fields of DistillationArguments (which include all of TrainingArguments)."
        )
    return parser.parse_dict(data)
