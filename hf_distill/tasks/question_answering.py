"""Extractive question answering (SQuAD): the answer span's start and end, distilled per example.

Logits: start and end `(B, T)`, over the real tokens (padding is no candidate). The loss unit is the example: its CE
is the mean of the start and end cross-entropies, its KD the mean of the start and end KLs. Metrics: SQuAD's `f1`
and `exact_match`, per example (the best span over its windows). In the `hf-distill` command a long context becomes
several overlapping features (windows), as in transformers' `run_qa.py`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch

from .. import losses
from ..task_metrics import QAReferences, TaskMetrics, best_span, squad_exact_match, squad_f1
from .base import Task, Terms, register_task, summed_objective

__all__ = ["QUESTION_ANSWERING", "QuestionAnswering"]

logger = logging.getLogger(__name__)

MAX_ANSWER_TOKENS = 30  # the longest predicted answer span, as in transformers' run_qa.py


class QuestionAnswering(Task):
    name = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    class_suffixes = ("ForQuestionAnswering",)
    label_names = ("start_positions", "end_positions")
    description = "extractive QA: the answer span's start and end (SQuAD)"
    pipeline_tag = "question-answering"
    no_cache_reason = "its start and end logits are not cached"
    needs_fast_tokenizer = True

    def logits(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        return outputs.start_logits, outputs.end_logits

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        attention_mask = inputs.get("attention_mask")
        terms: Terms = {}
        if self.has_labels(inputs):
            starts, ends = inputs["start_positions"], inputs["end_positions"]
            ce = (_span_ce(student[0], starts, attention_mask) + _span_ce(student[1], ends, attention_mask)) / 2
            terms["loss_ce"] = (ce, torch.ones_like(ce))
        if teacher is not None:
            start, end = (
                losses.position_soft_label_loss(s, t, attention_mask, temperature, reduction="none")
                for s, t in zip(student, teacher)
            )
            kd = (start + end) / 2
            terms["loss_kd"] = (kd, torch.ones_like(kd))
        return terms, summed_objective(terms, weights, student[0].device)

    def metrics(self, config, references=None):
        if references is None:
            raise ValueError("question-answering metrics need the evaluation set's QAReferences.")
        return TaskMetrics(self, "f1", config.num_labels, [], references)

    def preprocess_predictions(self, logits, labels):
        return logits  # (start, end), each (B, T): small

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """Per example: the best span over all its features (windows), scored by start + end logits (run_qa.py)."""
        start_logits, end_logits = predictions
        refs = metrics.references
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

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`question`, `context`, `answers` (SQuAD); `references` map the evaluation features to their examples."""
        return _question_answering(splits, args, tokenizer)


QUESTION_ANSWERING = register_task(QuestionAnswering())


def _span_ce(logits: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`(B,)` cross-entropy of start (or end) positions over the real tokens (padding is no candidate, so it
    changes nothing); positions outside the sequence (a truncated answer) are ignored, as in BERT."""
    ignored = logits.shape[1]
    positions = positions.view(-1).clamp(0, ignored)
    logits = logits.float()
    if attention_mask is not None:
        logits = logits.masked_fill(~attention_mask.to(logits.device).bool(), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, positions, reduction="none", ignore_index=ignored)


# ---- data for the hf-distill command (a long context is several overlapping features, as run_qa.py) -------------


def _answers(cell: Any, context: str, split: str, row: int, column: str) -> tuple[list[str], list[int]]:
    try:
        answers = json.loads(cell) if isinstance(cell, str) else cell
    except json.JSONDecodeError:
        answers = None
    texts = answers.get("text") if isinstance(answers, dict) else None
    starts = answers.get("answer_start") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(
            f"the {split} data's row {row} has {column}={cell!r}; write SQuAD answers: "
            '{"text": ["Denver Broncos"], "answer_start": [177]} (equal-length lists; empty for no answer).'
        )
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            raise ValueError(
                f"the {split} data's row {row}: answer {text!r} is not at character {start!r} of its context "
                f"(found {context[start : start + len(text)] if isinstance(start, int) else None!r}). "
                "answer_start is the answer's character offset in the context."
            )
    return [str(t) for t in texts], starts


def _stride(questions: list[str], contexts: list[str], tokenizer, args, split: str) -> int:
    """`--doc_stride` when some row needs several windows, else 0 (no row overflows, so it changes nothing, and the
    tokenizer refuses a stride over its max length even then). Refuses a given stride that leaves a window no room
    to move forward; the default (`min(128, max_seq_length // 3)`) is halved to fit instead, with a warning."""
    question_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    overflowing = [(args.max_seq_length - len(q) - special, row)  # (context tokens per window, row)
                   for row, (q, c) in enumerate(zip(question_ids, context_ids))
                   if len(q) + len(c) + special > args.max_seq_length]  # fmt: skip
    if not overflowing:
        return 0
    room, row = min(overflowing)
    if room < 1:
        raise ValueError(
            f"the {split} data's row {row} has a question of {len(question_ids[row])} tokens, which leaves no room "
            f"for its context in --max_seq_length={args.max_seq_length} tokens: raise --max_seq_length."
        )
    stride = args.doc_stride if args.doc_stride is not None else min(128, args.max_seq_length // 3)
    if stride >= room and args.doc_stride is None:
        logger.warning("The %s data's row %d leaves %d context tokens per window: --doc_stride %d instead of the "
                       "default %d (pass --doc_stride to choose).", split, row, room, room // 2, stride)  # fmt: skip
        return room // 2
    if stride >= room:
        raise ValueError(
            f"--doc_stride={args.doc_stride} is too large: the {split} data's row {row} has a context longer than "
            f"--max_seq_length={args.max_seq_length} allows, and its question ({len(question_ids[row])} tokens, "
            f"plus {special} special tokens) leaves {room} context tokens per window, so windows overlapping by "
            f"{args.doc_stride} tokens would never move forward. Pass --doc_stride below {room} (e.g. "
            f"--doc_stride {room // 2}), or raise --max_seq_length."
        )
    return stride


def _question_answering(splits, args, tokenizer):
    """One feature per window: `return_overflowing_tokens` with `stride=--doc_stride`, as run_qa.py's
    `prepare_train_features`; each feature is labelled with the answer's tokens when it holds the whole answer,
    else with CLS (0). `references` maps the evaluation features back to their examples."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from ..task_data import TaskData, _limited, _require

    encoded, references = {}, None
    for split, dataset in splits.items():
        question = _require(split, dataset, "text_column", args.text_column, "question", "question")
        context = _require(split, dataset, "text_pair_column", args.text_pair_column, "context", "context")
        answer = _require(split, dataset, "label_column", args.label_column, "answers", "answers")
        contexts = [str(c) for c in dataset[context]]
        answers = [_answers(cell, contexts[row], split, row, answer) for row, cell in enumerate(dataset[answer])]
        dataset, answers = _limited(dataset, answers, args, split)
        questions, contexts = [str(q) for q in dataset[question]], contexts[: len(dataset)]
        stride = _stride(questions, contexts, tokenizer, args, split)
        encoding = tokenizer(questions, contexts, truncation="only_second", max_length=args.max_seq_length,
                             stride=stride, return_overflowing_tokens=True,
                             return_offsets_mapping=True)  # fmt: skip
        example = list(encoding.pop("overflow_to_sample_mapping"))  # feature -> example
        offsets = [
            [span if sequence == 1 else None for span, sequence in zip(spans, encoding.sequence_ids(f))]
            for f, spans in enumerate(encoding.pop("offset_mapping"))
        ]  # fmt: skip
        positions = [_answer_tokens(spans, *answers[example[f]]) for f, spans in enumerate(offsets)]
        starts, ends = zip(*positions)
        encoded[split] = Dataset.from_dict({**encoding, "start_positions": starts, "end_positions": ends})
        if split == "validation":
            references = QAReferences(offsets, contexts, [texts or [""] for texts, _ in answers], example)
    columns = {"text_column": question, "text_pair_column": context, "label_column": answer}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorWithPadding(tokenizer), columns, references)


def _answer_tokens(offsets: list, texts: list[str], starts: list[int]) -> tuple[int, int]:
    """The first answer's start and end token in one feature; `(0, 0)` (the CLS token) when the answer list is empty
    or the feature's window does not hold the whole answer."""
    if not texts:
        return 0, 0
    first, last = starts[0], starts[0] + len(texts[0])
    inside = [t for t, span in enumerate(offsets) if span is not None]
    if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
        return 0, 0
    start = next(t for t in inside if offsets[t][1] > first)
    end = next(t for t in reversed(inside) if offsets[t][0] < last)
    return start, end
