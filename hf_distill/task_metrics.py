"""Evaluation metrics of each task, written here because `evaluate.load` needs the Hub.

| task | metrics (primary first) | definition |
| --- | --- | --- |
| `sequence-classification` | `accuracy` (+ `f1` of label 1 when binary) | `hf_distill.evaluation` |
| `token-classification` | `f1`, `precision`, `recall` (entities, when the labels are IOB2 tags), `accuracy` | below |
| `question-answering` | `f1`, `exact_match` (per example: the best span over its windows) | SQuAD |
| `masked-lm` | `accuracy` (masked tokens), `perplexity` | below |
| `causal-lm` | `accuracy` (next token), `perplexity` | below |

Every metric is a fraction in `[0, 1]` (SQuAD's script prints the same numbers times 100), except perplexity
(`exp` of the mean cross-entropy over the scored tokens, lower is better). Each `TaskMetrics` has a `preprocess`
(`Trainer`'s `preprocess_logits_for_metrics`: argmax and per-token cross-entropy, so evaluation never keeps
`(N, T, V)` logits) and a `compute` (`compute_metrics` on the gathered, `-100`-padded arrays).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .evaluation import load_metrics
from .labels import IGNORE_INDEX
from .losses import token_hard_label_loss
from .tasks import Task

__all__ = [
    "QAReferences",
    "TaskMetrics",
    "entity_scores",
    "get_entities",
    "is_iob2",
    "squad_exact_match",
    "squad_f1",
    "task_metrics",
]

IGNORE = IGNORE_INDEX
_PUNCTUATION = set(string.punctuation)
MAX_ANSWER_TOKENS = 30  # the longest predicted answer span, as in transformers' run_qa.py


# ---- entities: seqeval's default (conlleval-compatible) chunking, IOB2 tags ------------------------------------
# https://github.com/chakki-works/seqeval (seqeval/metrics/sequence_labeling.py) and the CoNLL-2000 conlleval script.


def is_iob2(label_names: Sequence[str]) -> bool:
    """True when every label is `O`, `B-TYPE` or `I-TYPE`, and some label begins an entity."""
    return any(n.startswith("B-") for n in label_names) and all(n == "O" or n[:2] in ("B-", "I-") for n in label_names)


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """`(type, first, last)` of each entity in one sentence's tags, as seqeval's `get_entities` (default mode).

    An `I-X` that does not continue an `X` entity starts a new one (conlleval's lenient reading).

    >>> get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"])
    [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4)]
    """
    entities, prev_tag, prev_type, begin = [], "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, kind = chunk[0], chunk[2:] if chunk != "O" else "_"
        ends = prev_tag != "O" and (tag in "BO" or prev_type != kind)
        starts = tag == "B" or (tag == "I" and (prev_tag == "O" or prev_type != kind))
        if ends:
            entities.append((prev_type, begin, i - 1))
        if starts:
            begin = i
        prev_tag, prev_type = tag, kind
    return entities


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (seqeval's overall scores); 0.0 when undefined."""
    true_pos = n_pred = n_true = 0
    for pred, ref in zip(predictions, references):
        pred_entities, ref_entities = set(get_entities(pred)), set(get_entities(ref))
        true_pos += len(pred_entities & ref_entities)
        n_pred, n_true = n_pred + len(pred_entities), n_true + len(ref_entities)
    precision = true_pos / n_pred if n_pred else 0.0
    recall = true_pos / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---- SQuAD: the official evaluation scripts (v1.1, and v2.0 for empty answers) -------------------------------------
# https://rajpurkar.github.io/SQuAD-explorer/ (evaluate-v1.1.py, evaluate-v2.0.py)


def _normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals one of the normalised answers."""
    return max(float(_normalize_answer(prediction) == _normalize_answer(a)) for a in answers)


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = _normalize_answer(prediction).split(), _normalize_answer(answer).split()
    if not pred or not gold:  # v2.0: an empty answer only matches an empty prediction
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best word-overlap F1 of the prediction against any of the answers."""
    return max(_token_f1(prediction, a) for a in answers)


@dataclass
class QAReferences:
    """What turns the evaluation set's span logits into answer text: per feature (window) `offsets` and `example`,
    per example `contexts` and `answers`. A context longer than `--max_seq_length` gives several features.

    `offsets[f][t]` is the `(start, end)` character span of feature `f`'s token `t` in `contexts[example[f]]`,
    `None` outside the context.
    """

    offsets: list[list[tuple[int, int] | None]]
    contexts: list[str]
    answers: list[list[str]]  # the gold answer texts ([""] for an unanswerable question)
    example: list[int]  # feature -> example (`overflow_to_sample_mapping`), ascending

    @property
    def num_examples(self) -> int:
        return len(self.contexts)


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: list, max_tokens: int
) -> tuple[int, int] | None:
    """`(start, end)` token indices maximising `start + end` logits with `start <= end < start + max_tokens`,
    both inside the context; `None` when truncation left no context token."""
    inside = np.array([t for t, span in enumerate(offsets) if span is not None])
    if inside.size == 0:
        return None
    scores = start_logits[inside][:, None] + end_logits[inside][None, :]  # (S, S): start row, end column
    length = inside[None, :] - inside[:, None]
    scores = np.where((length >= 0) & (length < max_tokens), scores, -np.inf)
    row, column = np.unravel_index(np.argmax(scores), scores.shape)
    return int(inside[row]), int(inside[column])


# ---- per task ------------------------------------------------------------------------------------------------------


@dataclass
class TaskMetrics:
    """The metrics of one task: `preprocess(logits, labels)` per batch, then `compute(predictions, label_ids)`."""

    task: Task
    primary: str
    num_labels: int = 0
    tag_names: list[str] = field(default_factory=list)  # token classification: id -> tag
    references: QAReferences | None = None

    def preprocess(self, logits, labels):
        """Keep what the metrics need: argmax ids (`(B,)` or `(B, T)`), plus per-token cross-entropy for LMs."""
        if self.task.name == "question-answering":
            return logits  # (start, end), each (B, T): small
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        predictions = logits.argmax(dim=-1)
        if self.task.name == "masked-lm":
            return predictions, token_hard_label_loss(logits, labels, reduction="none")
        if self.task.name == "causal-lm":  # position t predicts token t + 1; the last column has no target
            nll = token_hard_label_loss(logits[:, :-1], labels[:, 1:], reduction="none")
            return predictions, torch.nn.functional.pad(nll, (0, 1))
        return predictions

    def compute(self, predictions, label_ids) -> dict[str, float]:
        name = self.task.name
        if name == "question-answering":
            return self._question_answering(*predictions)
        if name in ("masked-lm", "causal-lm"):
            return _language_modelling(*predictions, np.asarray(label_ids), shift=name == "causal-lm")
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        if name == "token-classification":
            return self._token_classification(predictions, label_ids)
        return {k: fn(predictions, label_ids) for k, fn in load_metrics(self.num_labels).items()}

    def _token_classification(self, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        labelled = label_ids != IGNORE  # the first sub-token of each word
        if not labelled.any():
            raise ValueError("no labelled tokens to score: every label is -100.")
        metrics = {"accuracy": float((predictions[labelled] == label_ids[labelled]).mean())}
        if is_iob2(self.tag_names):
            names = self.tag_names
            pred = [[names[p] for p in row[mask]] for row, mask in zip(predictions, labelled)]
            gold = [[names[g] for g in row[mask]] for row, mask in zip(label_ids, labelled)]
            metrics = entity_scores(pred, gold) | metrics
        return metrics

    def _question_answering(self, start_logits: np.ndarray, end_logits: np.ndarray) -> dict[str, float]:
        """Per example: the best span over all its features (windows), scored by start + end logits (run_qa.py)."""
        refs = self.references
        best: list[tuple[float, str]] = [(-math.inf, "")] * refs.num_examples  # (score, text) per example
        for f, offsets in enumerate(refs.offsets):
            span = best_span(start_logits[f], end_logits[f], offsets, MAX_ANSWER_TOKENS)
            if span is None:
                continue
            score = float(start_logits[f][span[0]] + end_logits[f][span[1]])
            example = refs.example[f]
            if score > best[example][0]:
                best[example] = (score, refs.contexts[example][offsets[span[0]][0] : offsets[span[1]][1]])
        exact = sum(squad_exact_match(text, refs.answers[i]) for i, (_, text) in enumerate(best))
        f1 = sum(squad_f1(text, refs.answers[i]) for i, (_, text) in enumerate(best))
        return {"f1": f1 / refs.num_examples, "exact_match": exact / refs.num_examples}


def _language_modelling(predictions, nll, label_ids: np.ndarray, shift: bool) -> dict[str, float]:
    """Accuracy and perplexity over the scored tokens: masked ones, or (causal) every next token that has a label."""
    predictions, nll = np.asarray(predictions), np.asarray(nll, dtype=np.float64)
    if shift:
        predictions, nll, label_ids = predictions[:, :-1], nll[:, :-1], label_ids[:, 1:]
    scored = label_ids != IGNORE
    if not scored.any():
        raise ValueError("no tokens to score: every label is -100.")
    mean_nll = float(nll[scored].mean())
    return {
        "accuracy": float((predictions[scored] == label_ids[scored]).mean()),
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,
    }


def task_metrics(task: Task, config, references: QAReferences | None = None) -> TaskMetrics:
    """The `TaskMetrics` of `task` for a teacher with `config` (its labels name token-classification tags)."""
    names = [str(config.id2label[i]) for i in range(config.num_labels)] if task.name == "token-classification" else []
    primary = {"question-answering": "f1", "token-classification": "f1" if is_iob2(names) else "accuracy"}
    if task.name == "question-answering" and references is None:
        raise ValueError("question-answering metrics need the evaluation set's QAReferences.")
    return TaskMetrics(task, primary.get(task.name, "accuracy"), config.num_labels, names, references)
