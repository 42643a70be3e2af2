"""Generated-text metrics for seq2seq: ROUGE-L F, corpus BLEU-4 and exact match, from `evaluate` or written here.

`evaluate.load("rouge")` / `evaluate.load("bleu")` fetch their scripts from the Hugging Face Hub (and need the
`rouge_score` package); where that fails (offline, as in the tests) the definitions below are used. The log says
which implementation ran, and `last_backend()` returns it.

Definitions (the fallback), on words: the text lower-cased, every character that is not a letter or a digit made a
space (`rouge_score`'s default tokenizer), split on whitespace.

* ROUGE-L F (Lin, 2004): per example `P = LCS / len(prediction)`, `R = LCS / len(reference)`, `F = 2PR / (P + R)`
  (0 when either is empty, 1 when both are), averaged over examples (`rouge_score` with `use_stemmer=False`).
* BLEU-4 (Papineni et al., 2002), corpus-level with one reference per example and no smoothing: the geometric mean of
  the clipped n-gram precisions `p_n` (n = 1..4, counts summed over the corpus) times the brevity penalty
  `min(1, exp(1 - r / c))` (`c`, `r`: total prediction and reference lengths); 0 when some `p_n` is 0. It equals
  `evaluate`'s `bleu` (the tensorflow/nmt script) on these words; sacreBLEU tokenises differently.
* exact match: the fraction of predictions whose words equal the reference's.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["corpus_bleu", "exact_match", "last_backend", "rouge_l_f", "text_scores", "words"]

logger = logging.getLogger(__name__)

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_EVALUATE: dict[str, object | None] = {}  # "rouge"/"bleu" -> evaluate module, or None when it could not be loaded
_BACKEND = {"name": None}


def words(text: str) -> list[str]:
    """Lower-cased words: letters and digits, everything else separates (`rouge_score`'s tokenizer)."""
    return _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-example ROUGE-L F-measure (longest common subsequence of words)."""
    _check_lengths(predictions, references)
    scores = []
    for prediction, reference in zip(predictions, references):
        pred, ref = words(prediction), words(reference)
        if not pred or not ref:
            scores.append(float(pred == ref))
            continue
        lcs = _lcs_length(pred, ref)
        scores.append(0.0 if lcs == 0 else 2 * lcs / (len(pred) + len(ref)))  # 2PR/(P+R) with P=l/|p|, R=l/|r|
    return sum(scores) / len(scores)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU with one reference per prediction, uniform weights up to `max_order`, no smoothing."""
    _check_lengths(predictions, references)
    matches, totals = [0] * max_order, [0] * max_order
    pred_length = ref_length = 0
    for prediction, reference in zip(predictions, references):
        pred, ref = words(prediction), words(reference)
        pred_length, ref_length = pred_length + len(pred), ref_length + len(ref)
        for n in range(1, max_order + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred, n), _ngrams(ref, n)
            matches[n - 1] += sum((pred_ngrams & ref_ngrams).values())  # clipped by the reference's counts
            totals[n - 1] += max(len(pred) - n + 1, 0)
    if pred_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if pred_length > ref_length else math.exp(1 - ref_length / pred_length)
    return brevity * math.exp(log_precision)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions whose words (`words`) equal the reference's."""
    _check_lengths(predictions, references)
    return sum(words(p) == words(r) for p, r in zip(predictions, references)) / len(predictions)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need as many predictions as references (> 0), got {len(predictions)} and {len(references)}."
        )


def _evaluate_module(name: str):
    if name not in _EVALUATE:
        try:
            import evaluate

            _EVALUATE[name] = evaluate.load(name)
        except Exception as error:  # no Hub access, no cached script, no rouge_score: our own definitions
            _EVALUATE[name] = None
            logger.warning(
                "evaluate.load(%r) failed (%s: %s); using hf_distill.text_metrics' own definition instead.",
                name, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
            )  # fmt: skip
    return _EVALUATE[name]


def text_scores(predictions: Sequence[str], references: Sequence[str], use_evaluate: bool = True) -> dict[str, float]:
    """`{"rougeL", "bleu", "exact_match"}` of generated texts against one reference each, all in `[0, 1]`.

    ROUGE-L and BLEU come from `evaluate` when its scripts load (`use_evaluate`), else from this module; the backend
    that ran is logged once and kept in `last_backend()`.
    """
    rouge = _evaluate_module("rouge") if use_evaluate else None
    bleu = _evaluate_module("bleu") if use_evaluate else None
    scores = {
        "rougeL": float(rouge.compute(predictions=list(predictions), references=list(references))["rougeL"])
        if rouge is not None
        else rouge_l_f(predictions, references),
        "bleu": float(bleu.compute(predictions=list(predictions), references=[[r] for r in references])["bleu"])
        if bleu is not None
        else corpus_bleu(predictions, references),
        "exact_match": exact_match(predictions, references),
    }
    backend = f"rougeL: {'evaluate' if rouge else 'hf_distill'}, bleu: {'evaluate' if bleu else 'hf_distill'}"
    if backend != _BACKEND["name"]:
        logger.info("Generated-text metrics computed by %s (exact_match: hf_distill).", backend)
        _BACKEND["name"] = backend
    return scores


def last_backend() -> str | None:
    """Which implementation computed the last `text_scores`, e.g. `"rougeL: hf_distill, bleu: hf_distill"`."""
    return _BACKEND["name"]
