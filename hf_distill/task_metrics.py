"""The evaluation metrics of every task, in one module, written here because `evaluate.load` needs the Hub.

| task | metrics (primary first) | definition |
| --- | --- | --- |
| `sequence-classification` | `accuracy` (+ `f1` of label 1 when binary) | `evaluate`'s, else the same below |
| `token-classification` | `f1`, `precision`, `recall` (entities, when the labels are IOB2 tags), `accuracy` | below |
| `question-answering` | `f1`, `exact_match` (per example: the best span over its windows) | SQuAD |
| `masked-lm` | `accuracy` (masked tokens), `perplexity` | below |
| `causal-lm` | `accuracy` (next token), `perplexity` | below |
| `seq2seq` | `rougeL`, `bleu`, `exact_match` (generated); `accuracy`, `perplexity` (teacher forced) | `text_metrics` |
| `multiple-choice` | `accuracy` (the chosen ending) | `accuracy` below |
| `regression` | `pearson`, `spearman`, `mse` | below (numpy; no scipy needed) |
| `multi-label-classification` | `micro_f1`, `macro_f1`, `exact_match` (logit > 0, i.e. probability > 0.5) | below |
| `image-classification` | `accuracy`, `top5_accuracy` (when there are more than 5 classes) | below |

Every metric is a fraction in `[0, 1]` (SQuAD's script prints the same numbers times 100), except perplexity
(`exp` of the mean cross-entropy over the scored tokens, lower is better), Pearson and Spearman (in `[-1, 1]`) and the
regression MSE (lower is better; the regression task's primary metric is Pearson). Each `TaskMetrics` has a
`preprocess` (`Trainer`'s `preprocess_logits_for_metrics`: argmax and per-token cross-entropy, so evaluation never
keeps `(N, T, V)` logits) and a `compute` (`compute_metrics` on the gathered, `-100`-padded arrays); both ask the task
(`Task.preprocess_predictions`, `Task.compute_metrics`), which reads the definitions here.

Sequence-classification metrics come from `evaluate` (`accuracy`, and `f1` for binary tasks). `evaluate.load`
fetches its metric scripts from the Hugging Face Hub; where the Hub cannot be reached, the same definitions
implemented here are used instead and the log says so once.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .labels import IGNORE_INDEX

if TYPE_CHECKING:
    from .tasks import Task

__all__ = [
    "QAReferences",
    "TaskMetrics",
    "accuracy",
    "binary_f1",
    "entity_scores",
    "get_entities",
    "is_iob2",
    "language_model_scores",
    "load_metrics",
    "multi_label_scores",
    "regression_scores",
    "squad_exact_match",
    "squad_f1",
    "task_metrics",
    "top_k_accuracy",
]

logger = logging.getLogger(__name__)

IGNORE = IGNORE_INDEX
_PUNCTUATION = set(string.punctuation)
_HUB_METRICS: dict[str, object | None] = {}  # name -> evaluate module, or None when it could not be loaded
_FALLBACK_ANNOUNCED = False


# ---- classification: evaluate's accuracy and binary F1, or the same definitions offline -----------------------


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of predictions equal to the reference (the definition of `evaluate`'s `accuracy`)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(
            f"need as many predictions as references (> 0), got {predictions.size} and {references.size}."
        )
    return float((predictions == references).mean())


def binary_f1(predictions: Sequence[int], references: Sequence[int], pos_label: int = 1) -> float:
    """F1 of the positive class (`evaluate`'s `f1` with its default `average="binary"`); 0.0 when undefined."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    true_pos = int(((predictions == pos_label) & (references == pos_label)).sum())
    false_pos = int(((predictions == pos_label) & (references != pos_label)).sum())
    false_neg = int(((predictions != pos_label) & (references == pos_label)).sum())
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0


def top_k_accuracy(top_predictions: Any, references: Sequence[int]) -> float:
    """Fraction of references among their row's predicted classes (`top_predictions`: `(N, k)`, best first)."""
    top_predictions, references = np.asarray(top_predictions), np.asarray(references)
    if top_predictions.ndim != 2 or len(top_predictions) != len(references) or references.size == 0:
        raise ValueError(f"need (N, k) top predictions for N > 0 references, got shapes {top_predictions.shape} "
                         f"and {references.shape}.")  # fmt: skip
    return float((top_predictions == references[:, None]).any(axis=1).mean())


def _hub_metric(name: str):
    global _FALLBACK_ANNOUNCED
    if name not in _HUB_METRICS:
        try:
            import evaluate

            _HUB_METRICS[name] = evaluate.load(name)
        except Exception as error:  # no Hub access, no cached script: fall back to our own definition
            _HUB_METRICS[name] = None
            if not _FALLBACK_ANNOUNCED:
                _FALLBACK_ANNOUNCED = True
                logger.warning(
                    "evaluate.load(%r) failed (%s: %s); the Hub is probably unreachable. Using hf_distill's own "
                    "accuracy/F1, which follow the same definitions.",
                    name,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                )
    return _HUB_METRICS[name]


def load_metrics(num_labels: int) -> dict[str, Callable[[Sequence[int], Sequence[int]], float]]:
    """`{"accuracy": fn}` plus `"f1"` when `num_labels == 2`; each `fn(predictions, references) -> float`."""
    names = ["accuracy"] + (["f1"] if num_labels == 2 else [])
    fallbacks = {"accuracy": accuracy, "f1": binary_f1}
    metrics = {}
    for name in names:
        module = _hub_metric(name)
        if module is None:
            metrics[name] = fallbacks[name]
        else:
            metrics[name] = _wrap(module, name)
    return metrics


def _wrap(module, name: str) -> Callable[[Sequence[int], Sequence[int]], float]:
    def compute(predictions, references) -> float:
        return float(module.compute(predictions=predictions, references=references)[name])

    return compute


# ---- regression (STS-B: Pearson and Spearman correlation) and multi-label classification ------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two 1-D arrays, in float64; 0.0 when either is constant (undefined)."""
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (`scipy.stats.rankdata`'s default `"average"`)."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # a tie group at 0-based first..first+c-1
    return ranks


def regression_scores(predictions: Any, references: Any) -> dict[str, float]:
    """`pearson`, `spearman` (Pearson of the average ranks) and `mse` over every example and output."""
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    references = np.asarray(references, dtype=np.float64).reshape(-1)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(
            f"need as many predictions as references (> 0), got {predictions.size} and {references.size}."
        )
    return {
        "pearson": _pearson(predictions, references),
        "spearman": _pearson(_average_ranks(predictions), _average_ranks(references)),
        "mse": float(((predictions - references) ** 2).mean()),
    }


def multi_label_scores(predictions: Any, references: Any) -> dict[str, float]:
    """`micro_f1` (over every (example, label) decision), `macro_f1` (the mean of each label's F1, 0.0 for a label
    never predicted nor present, as scikit-learn's `zero_division=0`) and `exact_match` (the fraction of examples
    whose whole label set is right), from `(N, L)` 0/1 predictions and references (thresholded at 0.5)."""
    predicted = np.asarray(predictions).astype(np.float64) > 0.5
    gold = np.asarray(references).astype(np.float64) > 0.5
    if predicted.shape != gold.shape or predicted.ndim != 2 or predicted.size == 0:
        raise ValueError(f"need (examples, labels) predictions and references, got {predicted.shape} and "
                         f"{gold.shape}.")  # fmt: skip
    true_pos = (predicted & gold).sum(axis=0)
    false_pos, false_neg = (predicted & ~gold).sum(axis=0), (~predicted & gold).sum(axis=0)
    micro = 2 * true_pos.sum() + false_pos.sum() + false_neg.sum()
    per_label = 2 * true_pos + false_pos + false_neg
    return {
        "micro_f1": float(2 * true_pos.sum() / micro) if micro else 0.0,
        "macro_f1": float(np.mean(np.where(per_label > 0, 2 * true_pos / np.maximum(per_label, 1), 0.0))),
        "exact_match": float((predicted == gold).all(axis=1).mean()),
    }


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


# ---- language models --------------------------------------------------------------------------------------------


def language_model_scores(predictions, nll, label_ids, shift: bool) -> dict[str, float]:
    """Accuracy and perplexity over the scored tokens: masked ones, or (`shift`: causal) every next token that has a
    label. `predictions` and `nll` are the per-token argmax ids and cross-entropies, `(N, T)`, `-100`-padded."""
    predictions, nll = np.asarray(predictions), np.asarray(nll, dtype=np.float64)
    label_ids = np.asarray(label_ids)
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


# ---- per task ------------------------------------------------------------------------------------------------------


@dataclass
class TaskMetrics:
    """The metrics of one task: `preprocess(logits, labels)` per batch, then `compute(predictions, label_ids)`."""

    task: Task
    primary: str
    num_labels: int = 0
    tag_names: list[str] = field(default_factory=list)  # token classification: id -> tag
    references: QAReferences | None = None
    tokenizer: Any = None  # tasks that generate text (seq2seq) decode their predictions with it
    max_target_length: int | None = None  # and generate at most this many tokens

    def preprocess(self, logits: Any, labels: Any) -> Any:
        """Keep what the metrics need: argmax ids (`(B,)` or `(B, T)`), plus per-token cross-entropy for LMs."""
        return self.task.preprocess_predictions(logits, labels)

    def compute(self, predictions: Any, label_ids: Any) -> dict[str, float]:
        return self.task.compute_metrics(self, predictions, label_ids)


def task_metrics(task: Task, config: Any, references: QAReferences | None = None) -> TaskMetrics:
    """The `TaskMetrics` of `task` for a teacher with `config` (its labels name token-classification tags)."""
    return task.metrics(config, references)
