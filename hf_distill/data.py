"""Data for the `hf-distill` command: local csv/tsv/json/jsonl files or a Hub dataset, checked, labelled, tokenised.

Every check runs before any model work: a missing file, a missing column, labels the teacher does not know, a
sequence length longer than the model's position embeddings. Padding is dynamic (per batch, in the collator).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

__all__ = ["DATA_EXTENSIONS", "DataArguments", "encode_labels", "load_split", "resolve_columns", "tokenize"]

logger = logging.getLogger(__name__)

DATA_EXTENSIONS = ("csv", "tsv", "json", "jsonl")
_TEXT_COLUMN_GUESSES = ("sentence", "text")


@dataclass
class DataArguments:
    """What to train and evaluate on. Either a Hub dataset (`dataset_name`) or local files (`train_file`)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name, e.g. 'nyu-mll/glue' (needs Hub access)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration, e.g. 'sst2'."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file: .csv, .tsv (GLUE format), .json or .jsonl."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local evaluation file, same formats; needed with --train_file."}
    )
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    validation_split: str = field(default="validation", metadata={"help": "Split of --dataset_name to evaluate on."})
    text_column: str | None = field(
        default=None,
        metadata={"help": "Column with the text. Default: 'sentence' or 'text', whichever exists; 'tokens' (word "
                  "lists) for token classification, 'question' for question answering."},
    )  # fmt: skip
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "Second text column: of sentence pairs (e.g. 'sentence2'; --task sentence-pair guesses "
                  "it), or the context for question answering (default 'context')."},
    )  # fmt: skip
    label_column: str | None = field(
        default=None,
        metadata={"help": "Column with the labels: integer ids or the teacher's label names. Default: 'label'; "
                  "'ner_tags', 'labels' or 'label' (one per word) for token classification; 'answers' for question "
                  "answering; language models have none."},
    )  # fmt: skip
    audio_column: str | None = field(
        default=None,
        metadata={"help": "Audio classification: the column of audio, a `datasets.Audio` feature or WAV file paths "
                  "(relative to the working directory or the data file). Default: 'audio', 'file' or 'path'."},
    )  # fmt: skip
    max_audio_seconds: float | None = field(
        default=None, metadata={"help": "Audio classification: clips longer than this many seconds are cut."}
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "Image classification: the column of images, a datasets Image feature or file paths "
                  "(relative to the data file's folder). Default: 'image', 'img', 'image_path', 'path', 'file_name' "
                  "or 'filename', whichever exists."},
    )  # fmt: skip
    random_resized_crop: bool = field(
        default=False,
        metadata={"help": "Image classification: augment training images with a random resized crop (area fraction "
                  "in [--crop_min_scale, 1], aspect 3/4..4/3, resized back), afresh each epoch. Off by default."},
    )  # fmt: skip
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "--random_resized_crop: the smallest fraction of the image area kept."}
    )
    horizontal_flip: bool = field(
        default=False, metadata={"help": "Image classification: flip training images left-right, half of the time."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Longer inputs are truncated to this many tokens; padding is per batch."}
    )
    target_column: str | None = field(
        default=None,
        metadata={"help": "seq2seq: the column with the target texts. Default: 'target' or 'summary', whichever "
                  "exists (the source is --text_column: 'source', 'text' or 'sentence')."},
    )  # fmt: skip
    max_target_length: int = field(
        default=64, metadata={"help": "seq2seq: targets are truncated to this many tokens, and generated up to it."}
    )
    doc_stride: int | None = field(
        default=None,
        metadata={"help": "Question answering: a context longer than --max_seq_length is split into windows that "
                  "overlap by this many tokens (as transformers' run_qa.py). Must be less than --max_seq_length "
                  "minus the question's tokens. Default: min(128, max_seq_length // 3), 128 at run_qa.py's 384, "
                  "halved for a row whose question leaves less room."},
    )  # fmt: skip
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (for quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation examples (for quick runs)."}
    )

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_file is None:
            raise ValueError(
                "no data: pass --train_file and --validation_file (csv, tsv, json or jsonl), or --dataset_name."
            )
        if self.dataset_name is not None and (self.train_file or self.validation_file):
            raise ValueError(
                f"--dataset_name={self.dataset_name!r} and --train_file/--validation_file were both given: use one "
                "data source."
            )
        if self.train_file is not None and self.validation_file is None:
            raise ValueError(
                "--validation_file is missing: the run evaluates the teacher and the student before and after "
                "distillation, so it needs an evaluation file next to --train_file."
            )
        for name in ("train_file", "validation_file"):
            value = getattr(self, name)
            if value is None:
                continue
            extension = Path(value).suffix.lower().lstrip(".")
            if extension not in DATA_EXTENSIONS:
                raise ValueError(
                    f"--{name}={value!r} has extension {extension!r}; supported: {', '.join(DATA_EXTENSIONS)}."
                )
            if not Path(value).is_file():
                raise FileNotFoundError(f"--{name}={value!r}: no such file.")
        if self.doc_stride is not None and self.doc_stride < 0:
            raise ValueError(
                f"--doc_stride must be >= 0 (tokens shared by consecutive windows), got {self.doc_stride}."
            )
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"--crop_min_scale={self.crop_min_scale} must be in (0, 1]: a fraction of the area.")
        if self.max_audio_seconds is not None and not self.max_audio_seconds > 0:
            raise ValueError(f"--max_audio_seconds must be > 0, got {self.max_audio_seconds}.")
        for name in ("max_seq_length", "max_target_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}.")


def _read_file(path: str) -> Dataset:
    extension = Path(path).suffix.lower().lstrip(".")
    if extension in ("csv", "tsv"):
        import pandas as pd

        # GLUE TSVs are unquoted; keep "null"/"nan" sentences as text, not missing values.
        options = {"sep": "\t", "quoting": csv.QUOTE_NONE} if extension == "tsv" else {}
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], **options)
        return Dataset.from_pandas(frame, preserve_index=False)
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):  # {"data": [...]} style: the one list of records inside
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if not isinstance(data, list):  # JSON lines
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not a JSON list of records nor JSON lines ({error}). Write one object per line, "
                'e.g. {"sentence": "a fine film", "label": 1}.'
            ) from error
    if not data or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a non-empty list of records (one JSON object per example).")
    import pyarrow as pa

    try:
        return Dataset.from_list(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(
            f"{path}: a column holds values of different kinds across rows ({error}). Give each column one kind of "
            "value in every row (e.g. every 'answers' an object, every 'tokens' a list)."
        ) from error


def load_split(args: DataArguments, split: str) -> Dataset:
    """The `"train"` or `"validation"` examples, from the local file or the Hub dataset."""
    if args.dataset_name is None:
        path = args.train_file if split == "train" else args.validation_file
        dataset = _read_file(path)
        source = path
    else:
        from datasets import load_dataset

        name = args.train_split if split == "train" else args.validation_split
        source = f"{args.dataset_name}/{args.dataset_config_name or ''}:{name}"
        try:
            dataset = load_dataset(args.dataset_name, args.dataset_config_name, split=name)
        except Exception as error:
            raise ValueError(
                f"could not load split {name!r} of --dataset_name={args.dataset_name!r} "
                f"({type(error).__name__}: {str(error)[:300]}). Without Hub access, download the data elsewhere and "
                "pass --train_file/--validation_file."
            ) from error
    if len(dataset) == 0:
        raise ValueError(f"the {split} data ({source}) has no examples.")
    return dataset


def resolve_columns(args: DataArguments, dataset: Dataset, split: str) -> tuple[str, str | None, str | None]:
    """`(text, text_pair, label)` column names, each checked to exist in `dataset` (pair and label: when given)."""
    columns = dataset.column_names
    text = args.text_column or next((c for c in _TEXT_COLUMN_GUESSES if c in columns), None)
    if text is None:
        raise ValueError(
            f"no text column: the {split} data has columns {columns}, none of them 'sentence' or 'text'. "
            "Name it with --text_column."
        )
    for option, name in (("text_column", text), ("text_pair_column", args.text_pair_column),
                         ("label_column", args.label_column)):  # fmt: skip
        if name is not None and name not in columns:
            raise ValueError(f"--{option}={name!r} is not a column of the {split} data; its columns are {columns}.")
    return text, args.text_pair_column, args.label_column


def encode_labels(values: list[Any], config, split: str, require_all: bool) -> list[int]:
    """Map the data's labels to the teacher's ids, or fail if the two label sets differ.

    Integer labels must be ids of the teacher (`0..num_labels-1`); string labels must be names in the teacher's
    `label2id`. With `require_all` (the training data), every teacher label must also occur in the data.
    """
    num_labels = config.num_labels
    id2label = {int(k): v for k, v in config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    teacher_labels = f"num_labels={num_labels}, id2label={id2label}"
    if num_labels < 2:
        raise ValueError(f"the teacher has num_labels={num_labels} (regression); hf-distill handles classification.")
    if any(v is None or (isinstance(v, str) and v == "") for v in values):
        raise ValueError(f"the {split} data has examples without a label; every example needs one.")
    if all(isinstance(v, str) for v in values):
        unknown = sorted(set(values) - set(label2id))
        if unknown:
            raise ValueError(
                f"the {split} labels {unknown[:10]} are not label names of the teacher ({teacher_labels}). Use the "
                "teacher's label names or integer ids in the label column."
            )
        ids = [label2id[v] for v in values]
    elif all(isinstance(v, int) or (isinstance(v, float) and float(v).is_integer()) for v in values):
        ids = [int(v) for v in values]
        outside = sorted({i for i in ids if not 0 <= i < num_labels})
        if outside:
            raise ValueError(
                f"the {split} labels include {outside[:10]}, outside the teacher's label set ({teacher_labels}). "
                "The teacher must have been trained on the same labels as the data."
            )
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"the {split} label column mixes or uses unsupported types {kinds}; use ints or names.")
    if require_all:
        missing = sorted(set(range(num_labels)) - set(ids))
        if missing:
            raise ValueError(
                f"the teacher predicts {num_labels} labels ({teacher_labels}), but the {split} data never has "
                f"label(s) {[id2label[i] for i in missing]}: teacher and data have different label sets. Use a "
                "teacher fine-tuned on this task."
            )
    return ids


def tokenize(dataset: Dataset, tokenizer, text: str, text_pair: str | None, labels: list[int], max_length: int):
    """`input_ids`, `attention_mask` (and `token_type_ids`) truncated to `max_length`, plus `labels`; no padding."""

    def encode(batch):
        pairs = batch[text_pair] if text_pair else None
        return tokenizer([str(t) for t in batch[text]], [str(t) for t in pairs] if pairs else None,
                         truncation=True, max_length=max_length)  # fmt: skip

    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    return encoded.add_column("labels", labels)
