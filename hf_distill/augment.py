"""Data augmentation for a transfer set: new inputs that only the teacher labels.

Distillation pays more when the student sees the teacher on more inputs than the labelled ones
([Tang et al. 2019](https://arxiv.org/abs/1903.12136), [TinyBERT](https://arxiv.org/abs/1909.10351)). This module makes
such inputs from the training texts, in Tang et al.'s scheme with TinyBERT's word replacement:

* for each whitespace word draw `u ~ U[0, 1)`: if `u < p_mask` the word becomes the tokenizer's mask token; if
  `p_mask <= u < p_mask + p_replace` it is replaced by a random one of its top-k candidates, taken from a masked LM
  (the word masked in the original sentence, the MLM's top-k whole-word predictions; single-piece words only) or
  from the word's nearest neighbours in an input embedding matrix (see `embedding_neighbours`); a word with no
  candidate stays as it is;
* then, with probability `p_ngram`, only an n-gram of the result is kept: `n ~ U{1..max_ngram}`, start uniform.

With both sources given, single-piece words use the masked LM and the others the neighbours (TinyBERT's rule).
The rows made here carry no hard label (`-100`), so the trainer trains on them with the distillation terms only.
Everything is seeded: the same inputs, settings and seed give the same variants.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .labels import IGNORE_INDEX

__all__ = ["augment_dataset", "augment_texts", "embedding_neighbours"]

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 10  # rounds of redrawing the variants that came out as duplicates
_WORD_MARKERS = ("▁", "Ġ")  # SentencePiece / byte-level BPE word-start markers
_BRACKETED = re.compile(r"^(\[.*\]|<.*>)$")  # [unused7], <mask>, <|endoftext|>: not words


# ---- the vocabulary's whole words ------------------------------------------------------------------------------


def _whole_words(tokenizer: Any) -> dict[int, str]:
    """`{token id: word}` for the vocabulary entries that are whole words with a letter in them.

    Skipped: special tokens, bracketed placeholders (`[unused7]`), WordPiece continuations (`##ing`) and, for
    SentencePiece / byte-level BPE vocabularies, pieces without the word-start marker (which is stripped).
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    marked = sum(token.startswith(_WORD_MARKERS) for token in vocab) > len(vocab) // 4
    words = {}
    for token, index in vocab.items():
        if token in special or token.startswith("##") or _BRACKETED.match(token):
            continue
        if marked:
            if not token.startswith(_WORD_MARKERS):
                continue
            token = token[1:]
        if any(c.isalpha() for c in token):
            words[index] = token
    return words


def embedding_neighbours(
    model_or_embeddings: torch.nn.Module | torch.Tensor,
    tokenizer: Any,
    top_k: int = 15,
    chunk_size: int = 2048,
) -> dict[str, tuple[str, ...]]:
    """Each whole word of the vocabulary mapped to its `top_k` nearest whole words by cosine of input embeddings.

    Args:
        model_or_embeddings (`nn.Module` or `torch.Tensor` of shape `(V, D)`): a model (its
            `get_input_embeddings()` is used, e.g. the teacher's) or the embedding matrix itself, row `i` for id `i`.
        tokenizer: the model's tokenizer; only its whole-word entries take part (no special tokens, no `##` pieces).
        top_k (`int`, *optional*, defaults to 15): neighbours per word (TinyBERT uses 15).
        chunk_size (`int`, *optional*, defaults to 2048): words scored at once (memory is `chunk_size x V` floats).

    Returns:
        `dict[str, tuple[str, ...]]`: neighbours in decreasing cosine, the word itself excluded.

    >>> neighbours = embedding_neighbours(teacher, tokenizer)  # doctest: +SKIP
    >>> neighbours["good"][:3]  # doctest: +SKIP
    ('great', 'bad', 'nice')
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1: the number of neighbours kept per word.")
    weights = model_or_embeddings
    if isinstance(weights, torch.nn.Module):
        weights = weights.get_input_embeddings().weight
    words = {i: w for i, w in _whole_words(tokenizer).items() if i < weights.shape[0]}
    if len(words) < 2:
        raise ValueError(f"the tokenizer has {len(words)} whole-word vocabulary entries; neighbours need at least 2.")
    ids = torch.tensor(sorted(words))
    names = [words[i] for i in ids.tolist()]
    vectors = torch.nn.functional.normalize(weights.detach().float()[ids], dim=-1)  # (N, D)
    k = min(top_k, len(names) - 1)
    neighbours = {}
    with torch.no_grad():
        for start in range(0, len(names), chunk_size):
            cosine = vectors[start : start + chunk_size] @ vectors.T  # (c, N)
            rows = torch.arange(cosine.shape[0])
            cosine[rows, rows + start] = float("-inf")  # not its own neighbour
            best = cosine.topk(k, dim=-1).indices.tolist()  # (c, k), decreasing cosine
            for offset, row in enumerate(best):
                neighbours[names[start + offset]] = tuple(names[j] for j in row)
    return neighbours


# ---- replacement candidates --------------------------------------------------------------------------------------


class _Candidates:
    """Replacement candidates for words at positions of the original texts: masked LM and/or embedding neighbours."""

    def __init__(self, tokenizer, word_neighbours, masked_lm, top_k: int, batch_size: int = 64) -> None:
        self.tokenizer, self.neighbours, self.masked_lm = tokenizer, word_neighbours, masked_lm
        self.top_k, self.batch_size = top_k, batch_size
        self._single_piece: dict[str, bool] = {}
        self._predicted: dict[tuple[tuple[str, ...], int], tuple[str, ...]] = {}  # the same request, once
        if masked_lm is not None:
            self._vocab_words = _whole_words(tokenizer)

    def _neighbours_of(self, word: str) -> tuple[str, ...]:
        if not self.neighbours:
            return ()
        return self.neighbours.get(word) or self.neighbours.get(word.lower()) or ()

    def _is_single_piece(self, word: str) -> bool:
        if word not in self._single_piece:
            self._single_piece[word] = len(self.tokenizer.tokenize(word)) == 1
        return self._single_piece[word]

    def resolve(self, requests: list[tuple[tuple[str, ...], int]]) -> list[tuple[str, ...]]:
        """Candidates for each `(words, position)`: the MLM's for single-piece words, else the neighbours."""
        found: list[tuple[str, ...]] = [()] * len(requests)
        by_mlm = []
        for n, (words, position) in enumerate(requests):
            if self.masked_lm is not None and self._is_single_piece(words[position]):
                by_mlm.append(n)
            else:
                found[n] = self._neighbours_of(words[position])
        todo = list(dict.fromkeys(requests[n] for n in by_mlm if requests[n] not in self._predicted))
        if todo:
            training = self.masked_lm.training
            self.masked_lm.eval()  # no dropout: the same predictions every time
            try:
                for start in range(0, len(todo), self.batch_size):
                    chunk = todo[start : start + self.batch_size]
                    self._predicted.update(zip(chunk, self._predict(chunk)))
            finally:
                self.masked_lm.train(training)
        for n in by_mlm:
            found[n] = self._predicted[requests[n]]
        return found

    @torch.no_grad()
    def _predict(self, requests: list[tuple[tuple[str, ...], int]]) -> list[tuple[str, ...]]:
        """TinyBERT: mask the word in its sentence, keep the MLM's top-k whole-word predictions (not the word)."""
        mask = self.tokenizer.mask_token
        texts = [" ".join((*words[:p], mask, *words[p + 1 :])) for words, p in requests]
        device = next(self.masked_lm.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
        logits = self.masked_lm(**batch).logits  # (B, T, V)
        found = []
        for row, (words, position) in enumerate(requests):
            where = (batch["input_ids"][row] == self.tokenizer.mask_token_id).nonzero()
            if len(where) != 1:  # truncated away
                found.append(())
                continue
            scores = logits[row, where[0, 0]].float()  # (V,)
            original, picked = words[position].lower(), []
            ranked = scores.topk(min(len(scores), 4 * self.top_k + 16)).indices.tolist()  # usually enough words
            picked = [w for i in ranked if (w := self._vocab_words.get(i)) is not None and w.lower() != original]
            if len(picked) < self.top_k and len(ranked) < len(scores):  # many pieces or specials on top: rank all
                ranked = scores.argsort(descending=True).tolist()
                picked = [w for i in ranked if (w := self._vocab_words.get(i)) is not None and w.lower() != original]
            found.append(tuple(picked[: self.top_k]))
        return found


# ---- the augmentation ------------------------------------------------------------------------------------------


def _check_settings(p_mask, p_replace, p_ngram, max_ngram, multiplier, tokenizer, word_neighbours, masked_lm) -> None:
    for name, value in (("p_mask", p_mask), ("p_replace", p_replace), ("p_ngram", p_ngram)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} must be a probability in [0, 1].")
    if p_mask + p_replace > 1:
        raise ValueError(
            f"p_mask={p_mask} + p_replace={p_replace} > 1: each word is masked, replaced or kept, so the two "
            "probabilities must sum to at most 1."
        )
    if not isinstance(max_ngram, int) or max_ngram < 1:
        raise ValueError(f"max_ngram={max_ngram!r} must be an integer >= 1 (Tang et al. use 5).")
    if not isinstance(multiplier, int) or multiplier < 0:
        raise ValueError(f"multiplier={multiplier!r} must be an integer >= 0: the variants made per input.")
    if p_mask > 0 and getattr(tokenizer, "mask_token", None) is None:
        raise ValueError(
            f"p_mask={p_mask} replaces words by the mask token, but the tokenizer {type(tokenizer).__name__} has no "
            "mask_token. Pass a tokenizer with one (BERT-style), or set p_mask=0."
        )
    if masked_lm is not None and getattr(tokenizer, "mask_token", None) is None:
        raise ValueError("masked_lm predicts a masked word, but the tokenizer has no mask_token; pass the MLM's own.")
    if p_replace > 0 and word_neighbours is None and masked_lm is None:
        raise ValueError(
            f"p_replace={p_replace} replaces words, but no source was given: pass word_neighbours (e.g. "
            "embedding_neighbours(teacher, tokenizer)) or masked_lm (a *ForMaskedLM model), or set p_replace=0."
        )


def _draw(rng: np.random.Generator, words: tuple[str, ...], p_mask, p_replace, p_ngram, max_ngram):
    """One variant's plan for one text: per word 0 keep / 1 mask / 2 replace (with a uniform pick), and the span."""
    u, pick = rng.random(len(words)), rng.random(len(words))
    ops = np.where(u < p_mask, 1, np.where(u < p_mask + p_replace, 2, 0))
    start, stop = 0, len(words)
    if rng.random() < p_ngram and len(words) > 1:
        n = min(int(rng.integers(1, max_ngram + 1)), len(words))
        start = int(rng.integers(0, len(words) - n + 1))
        stop = start + n
    return ops, pick, start, stop


def _augment_rows(
    rows: Sequence[tuple[str, ...]],
    multiplier: int,
    tokenizer: Any,
    word_neighbours: Mapping[str, Sequence[str]] | None,
    masked_lm: torch.nn.Module | None,
    p_mask: float,
    p_replace: float,
    p_ngram: float,
    max_ngram: int,
    top_k: int,
    seed: int,
    deduplicate: bool,
) -> list[list[tuple[str, ...]]]:
    """Variants of each row (a tuple of texts, e.g. a sentence pair; each text augmented on its own)."""
    _check_settings(p_mask, p_replace, p_ngram, max_ngram, multiplier, tokenizer, word_neighbours, masked_lm)
    split = [tuple(tuple(str(text).split()) for text in row) for row in rows]
    variants: list[list[tuple[str, ...]]] = [[] for _ in rows]
    if multiplier == 0:
        return variants
    candidates = _Candidates(tokenizer, word_neighbours, masked_lm, top_k)
    mask = getattr(tokenizer, "mask_token", None)
    seen = {tuple(" ".join(words) for words in row) for row in split} if deduplicate else set()
    rngs = [np.random.default_rng([seed, i]) for i in range(len(rows))]  # row i's draws do not depend on others
    for _ in range(_MAX_ROUNDS if deduplicate else 1):
        plans = []  # (row, [(ops, pick, start, stop) per text])
        for i, row in enumerate(split):
            for _ in range(multiplier - len(variants[i])):
                plans.append((i, [_draw(rngs[i], words, p_mask, p_replace, p_ngram, max_ngram) for words in row]))
        if not plans:
            break
        requests = [(split[i][t], p) for i, plan in plans for t, (ops, _, a, b) in enumerate(plan)
                    for p in range(a, b) if ops[p] == 2]  # fmt: skip
        resolved = iter(candidates.resolve(requests))
        for i, plan in plans:
            texts = []
            for words, (ops, pick, start, stop) in zip(split[i], plan):
                out = []
                for p in range(start, stop):
                    if ops[p] == 1:
                        out.append(mask)
                    elif ops[p] == 2:
                        options = next(resolved)
                        out.append(options[int(pick[p] * len(options))] if options else words[p])
                    else:
                        out.append(words[p])
                texts.append(" ".join(out))
            texts = tuple(texts)
            if deduplicate:
                if texts in seen:
                    continue
                seen.add(texts)
            variants[i].append(texts)
    return variants


def augment_texts(
    texts: Sequence[str],
    *,
    multiplier: int,
    tokenizer: Any,
    word_neighbours: Mapping[str, Sequence[str]] | None = None,
    masked_lm: torch.nn.Module | None = None,
    p_mask: float = 0.1,
    p_replace: float = 0.1,
    p_ngram: float = 0.25,
    max_ngram: int = 5,
    top_k: int = 15,
    seed: int = 0,
    deduplicate: bool = True,
) -> list[list[str]]:
    """Up to `multiplier` new variants of each text (see the module docstring for the operations).

    Args:
        texts (`Sequence[str]`): the inputs; words are split on whitespace.
        multiplier (`int`): variants per input (0: none).
        tokenizer: the teacher's tokenizer: its `mask_token` masks words, and it tokenizes for `masked_lm`.
        word_neighbours (`Mapping[str, Sequence[str]]`, *optional*): replacement candidates per word, e.g.
            `embedding_neighbours(teacher, tokenizer)`; looked up as written, then lower-cased.
        masked_lm (`nn.Module`, *optional*): a `*ForMaskedLM` model sharing `tokenizer`, for single-piece words.
        p_mask (`float`, *optional*, defaults to 0.1): probability that a word becomes the mask token.
        p_replace (`float`, *optional*, defaults to 0.1): probability that a word is replaced by a candidate.
        p_ngram (`float`, *optional*, defaults to 0.25): probability that only an n-gram of the variant is kept.
        max_ngram (`int`, *optional*, defaults to 5): the n-gram's length is uniform in `1..max_ngram`.
        top_k (`int`, *optional*, defaults to 15): the masked LM's predictions considered per word.
        seed (`int`, *optional*, defaults to 0): input `i`'s variants come from a generator seeded with `(seed, i)`.
        deduplicate (`bool`, *optional*, defaults to `True`): drop variants equal to any input or to an earlier
            variant, redrawing them up to 9 more times; an input that cannot change (e.g. one word, nothing drawn)
            then gets fewer than `multiplier` variants.

    Returns:
        `list[list[str]]`: for each input, its variants.

    >>> augment_texts(["a fine film"], multiplier=2, tokenizer=tokenizer, p_replace=0)  # doctest: +SKIP
    [['a fine [MASK]', 'fine film']]
    """
    rows = _augment_rows([(t,) for t in texts], multiplier, tokenizer, word_neighbours, masked_lm, p_mask,
                         p_replace, p_ngram, max_ngram, top_k, seed, deduplicate)  # fmt: skip
    return [[texts_[0] for texts_ in row] for row in rows]


def augment_dataset(
    dataset,
    text_columns: str | Sequence[str],
    multiplier: int,
    *,
    tokenizer: Any,
    label_column: str | None = "label",
    word_neighbours: Mapping[str, Sequence[str]] | None = None,
    masked_lm: torch.nn.Module | None = None,
    p_mask: float = 0.1,
    p_replace: float = 0.1,
    p_ngram: float = 0.25,
    max_ngram: int = 5,
    top_k: int = 15,
    seed: int = 0,
    deduplicate: bool = True,
):
    """The rows of `dataset` followed by their augmented variants, which carry the label `-100` (no hard label).

    Augment the training split only (after any train/validation split, before tokenizing). Each text column is
    augmented on its own (sentence pairs: both sentences); the other columns are copied from the source row.
    The arguments after `multiplier` are those of `augment_texts`.

    Args:
        dataset (`datasets.Dataset`): untokenized rows.
        text_columns (`str` or `Sequence[str]`): the column(s) holding text, e.g. `"sentence"` or
            `["premise", "hypothesis"]`.
        multiplier (`int`): variants per row (0 returns `dataset` unchanged).
        label_column (`str`, *optional*, defaults to `"label"`): set to `-100` in the new rows; integer class ids
            (`None`: the data has no labels). It becomes `int64` (a `ClassLabel` cannot hold `-100`).

    Returns:
        `datasets.Dataset`: `len(dataset)` original rows, then up to `multiplier * len(dataset)` new ones.

    >>> train = augment_dataset(train, "sentence", 2, tokenizer=tokenizer,
    ...                         word_neighbours=embedding_neighbours(teacher, tokenizer))  # doctest: +SKIP
    """
    from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets

    columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}; use Dataset.from_dict.")
    for name, values in (("text_columns", columns), ("label_column", [] if label_column is None else [label_column])):
        missing = [c for c in values if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{name}={missing} not in the dataset's columns {dataset.column_names}.")
    if not columns:
        raise ValueError("text_columns is empty: name the column(s) holding the text to augment.")
    if label_column is not None:
        feature = dataset.features[label_column]
        if not isinstance(feature, ClassLabel) and not (
            isinstance(feature, Value) and feature.dtype.startswith("int")
        ):
            raise ValueError(
                f"label_column={label_column!r} has type {feature}; the new rows get the label -100, which needs "
                "integer class ids. Map label names to ids first (e.g. with the teacher's label2id)."
            )
    if multiplier == 0 or len(dataset) == 0:
        _check_settings(p_mask, p_replace, p_ngram, max_ngram, multiplier, tokenizer, word_neighbours, masked_lm)
        return dataset
    rows = list(zip(*(dataset[c] for c in columns)))
    variants = _augment_rows(rows, multiplier, tokenizer, word_neighbours, masked_lm, p_mask, p_replace, p_ngram,
                             max_ngram, top_k, seed, deduplicate)  # fmt: skip
    sources = [i for i, row in enumerate(variants) for _ in row]
    if not sources:
        logger.warning("augment_dataset: every variant was a duplicate; the dataset is returned unchanged.")
        return dataset
    original = dataset if label_column is None else dataset.cast_column(label_column, Value("int64"))
    replaced = {c: [v[n] for row in variants for v in row] for n, c in enumerate(columns)}
    if label_column is not None:
        replaced[label_column] = [IGNORE_INDEX] * len(sources)
    new = Dataset.from_dict(replaced, features=Features({c: original.features[c] for c in replaced}))
    carried = original.select(sources).remove_columns(list(replaced))  # the other columns, copied from the source
    if carried.column_names:
        new = concatenate_datasets([carried.flatten_indices(), new], axis=1)
    return concatenate_datasets([original, new.select_columns(original.column_names)])
