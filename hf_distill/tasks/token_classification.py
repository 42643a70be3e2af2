"""Token classification (NER, POS tagging): one label per token, distilled per token.

Logits `(B, T, C)` where `labels != -100` and not padding; the loss unit is the token. Metrics: entity `f1`,
`precision` and `recall` when the teacher's labels are IOB2 tags (seqeval's reading), and token `accuracy`. In the
`hf-distill` command each word's label goes to its first sub-token.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from ..labels import IGNORE_INDEX
from ..task_metrics import IGNORE, TaskMetrics, entity_scores, is_iob2
from .base import class_bound, register_task
from .token_level import TokenLevelTask

__all__ = ["TOKEN_CLASSIFICATION", "TokenClassification"]

logger = logging.getLogger(__name__)

_TOKEN_LABEL_GUESSES = ("ner_tags", "labels", "label")


class TokenClassification(TokenLevelTask):
    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    class_suffixes = ("ForTokenClassification",)
    label_bound = staticmethod(class_bound)  # the targets' ids are checked against it before training
    description = "one label per token (NER, POS tagging)"
    pipeline_tag = "token-classification"
    no_cache_reason = "its per-token logits are not cached"
    needs_fast_tokenizer = True

    def metrics(self, config, references=None):
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        return TaskMetrics(self, "f1" if is_iob2(names) else "accuracy", config.num_labels, names)

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        labelled = label_ids != IGNORE  # the first sub-token of each word
        if not labelled.any():
            raise ValueError("no labelled tokens to score: every label is -100.")
        scores = {"accuracy": float((predictions[labelled] == label_ids[labelled]).mean())}
        if is_iob2(metrics.tag_names):
            names = metrics.tag_names
            pred = [[names[p] for p in row[mask]] for row, mask in zip(predictions, labelled)]
            gold = [[names[g] for g in row[mask]] for row, mask in zip(label_ids, labelled)]
            scores = entity_scores(pred, gold) | scores
        return scores

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`tokens` (word lists) and `ner_tags`/`labels`/`label` (one per word), batched for token classification."""
        return _token_classification(splits, args, tokenizer, config)


TOKEN_CLASSIFICATION = register_task(TokenClassification())


# ---- data for the hf-distill command -----------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    """A list cell, or a csv/tsv cell holding a JSON list (`["EU", "rejects"]`) or space-separated items."""
    if isinstance(value, str):
        stripped = value.strip()
        return json.loads(stripped) if stripped.startswith("[") else stripped.split()
    return list(value) if value is not None else []


def _word_label_ids(tags: list, label2id: dict[str, int], num_labels: int) -> tuple[list[int], list]:
    ids, unknown = [], []
    for tag in tags:
        if isinstance(tag, str) and tag in label2id:
            ids.append(label2id[tag])
        elif isinstance(tag, int) or (isinstance(tag, str) and tag.lstrip("-").isdigit()):
            ids.append(int(tag))
            if not 0 <= ids[-1] < num_labels:
                unknown.append(tag)
        else:
            unknown.append(tag)
    return ids, unknown


def _token_classification(splits, args, tokenizer, config):
    from transformers import DataCollatorForTokenClassification

    from ..task_data import TaskData, _limited, _refuse, _require

    _refuse(args, TOKEN_CLASSIFICATION.name, ("text_pair_column",))
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    encoded = {}
    for split, dataset in splits.items():
        words_column = _require(split, dataset, "text_column", args.text_column, "tokens", "word-list ('tokens')")
        guess = next((c for c in _TOKEN_LABEL_GUESSES if c in dataset.column_names), None)
        label_column = _require(split, dataset, "label_column", args.label_column, guess,
                                "per-word label ('ner_tags', 'labels' or 'label')")  # fmt: skip
        words, labels, seen = [], [], set()
        for row, (cell, tags) in enumerate(zip(dataset[words_column], dataset[label_column])):
            row_words, row_tags = [str(w) for w in _as_list(cell)], _as_list(tags)
            if not row_words or len(row_words) != len(row_tags):
                raise ValueError(
                    f"the {split} data's row {row} has {len(row_words)} words in {words_column!r} but "
                    f"{len(row_tags)} labels in {label_column!r}: give each row a non-empty list of words and one "
                    "label per word."
                )
            ids, unknown = _word_label_ids(row_tags, label2id, config.num_labels)
            if unknown:
                raise ValueError(
                    f"the {split} data's row {row} has labels {unknown[:5]} in {label_column!r} that the teacher "
                    f"does not know (id2label={id2label}). Use its label names or ids 0..{len(id2label) - 1}."
                )
            words.append(row_words)
            labels.append(ids)
            seen.update(ids)
        if split == "train" and set(id2label) - seen:
            logger.warning("The training data never has the teacher's label(s) %s.",
                           [id2label[i] for i in sorted(set(id2label) - seen)])  # fmt: skip
        dataset, labels = _limited(dataset, labels, args, split)
        encoded[split] = _encode_words(words[: len(dataset)], labels, tokenizer, args.max_seq_length)
    columns = {"text_column": words_column, "text_pair_column": None, "label_column": label_column}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorForTokenClassification(tokenizer), columns)


def _encode_words(words: list[list[str]], word_labels: list[list[int]], tokenizer, max_length: int):
    """Tokenise word lists; each word's label goes to its first sub-token, -100 to the others and to special tokens."""
    from datasets import Dataset

    encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for i, row in enumerate(word_labels):
        previous, row_labels = None, []
        for word in encoding.word_ids(i):
            row_labels.append(IGNORE_INDEX if word is None or word == previous else row[word])
            previous = word
        labels.append(row_labels)
    return Dataset.from_dict({**encoding, "labels": labels})
