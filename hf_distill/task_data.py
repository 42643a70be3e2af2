"""Per-task data for the `hf-distill` command: which task runs, which columns it reads, how they become batches.

| task | columns (defaults) | batches |
| --- | --- | --- |
| `sequence-classification` | `sentence`/`text`, `label` | `DataCollatorWithPadding` |
| `sentence-pair` | `sentence1`/`sentence2`, `question`/`sentence` or `premise`/`hypothesis`; `label` | same |
| `token-classification` | `tokens` (word lists), `ner_tags`/`labels`/`label` (per word) | `...TokenClassification` |
| `question-answering` | `question`, `context`, `answers` (SQuAD); a long context in windows | `...WithPadding` |
| `masked-lm` | `sentence`/`text` | `DataCollatorForLanguageModeling`; the evaluation set masked once |
| `causal-lm` | `sentence`/`text` | `DataCollatorForLanguageModeling(mlm=False)` |

Every check (columns, labels, answer spans) reads the whole files before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from .data import DataArguments, encode_labels, load_split, resolve_columns, tokenize
from .labels import IGNORE_INDEX
from .task_metrics import QAReferences
from .tasks import TASKS, Task, task_of_class

__all__ = ["TASK_CHOICES", "TaskData", "prepare_task_data", "resolve_task"]

logger = logging.getLogger(__name__)

TASK_CHOICES = (*TASKS, "sentence-pair")
_PAIR_GUESSES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"))
_TOKEN_LABEL_GUESSES = ("ner_tags", "labels", "label")
MLM_PROBABILITY = 0.15
EVAL_MASKING_SEED = 0  # the evaluation set's masked positions, the same in every run


def resolve_task(name: str | None, teacher_config) -> tuple[Task, bool]:
    """`(task, sentence_pair)` from `--task`, or from the teacher's `config.architectures` when it is not given."""
    architectures = getattr(teacher_config, "architectures", None) or []
    found = {task_of_class(a) for a in architectures}
    detected = next((t for t in TASKS.values() if t in found), None)
    if name is not None:
        task = TASKS["sequence-classification" if name == "sentence-pair" else name]
        if detected is not None and detected is not task:
            raise ValueError(
                f"--task={name!r}, but the teacher is a {architectures[0]} ({detected.name}): loaded for {name} its "
                f"head would be random. Give a teacher fine-tuned for {name}, or drop --task to run {detected.name}."
            )
        return task, name == "sentence-pair"
    if detected is not None:
        logger.info("Task %s, from the teacher's architecture %s.", detected.name, architectures[0])
        return detected, False
    logger.info("The teacher's config.architectures=%s names no task head: running sequence-classification "
                "(pass --task to choose another).", architectures)  # fmt: skip
    return TASKS["sequence-classification"], False


@dataclass
class TaskData:
    """Tokenised training and evaluation sets and their collator; `references` for question answering."""

    train: Dataset
    evaluation: Dataset
    collator: Callable
    columns: dict[str, str | None]  # text_column, text_pair_column, label_column as used
    references: QAReferences | None = None


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
    name = "sentence-pair" if pair else task.name
    splits = {split: load_split(args, split) for split in ("train", "validation")}
    if name in ("token-classification", "question-answering") and not tokenizer.is_fast:
        raise ValueError(
            f"--task {name} maps words and answers to tokens through a fast tokenizer's offsets, but "
            f"{type(tokenizer).__name__} is a slow one. Save the teacher's tokenizer with use_fast=True (a "
            "tokenizer.json) and pass it with --tokenizer_name."
        )
    prepare = {"token-classification": _token_classification, "question-answering": _question_answering,
               "masked-lm": _masked_lm, "causal-lm": _causal_lm}.get(task.name, _sequence_classification)  # fmt: skip
    if augment is not None:
        if prepare is not _sequence_classification:
            raise ValueError(f"--augment makes sentence variants for sequence classification and sentence pairs; "
                             f"--task {name} is not supported: drop --augment.")  # fmt: skip
        return prepare(splits, args, tokenizer, teacher_config, pair=pair, augment=augment)
    return prepare(splits, args, tokenizer, teacher_config, pair=pair)


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


# ---- sequence classification -------------------------------------------------------------------------------------


def _pair_columns(args: DataArguments, columns: list[str], split: str) -> tuple[str, str]:
    if args.text_pair_column is None:
        guess = next(((a, b) for a, b in _PAIR_GUESSES if a in columns and b in columns), None)
        if guess is None:
            raise ValueError(
                f"--task sentence-pair needs two text columns, but the {split} data has columns {columns}, none of "
                f"the pairs {', '.join('/'.join(p) for p in _PAIR_GUESSES)}. Name them with --text_column and "
                "--text_pair_column."
            )
        return args.text_column or guess[0], guess[1]
    firsts = [a for a, _ in _PAIR_GUESSES] + ["sentence", "text"]
    return args.text_column or next((c for c in firsts if c in columns), None), args.text_pair_column


def _sequence_classification(splits, args: DataArguments, tokenizer, config, pair: bool, augment=None) -> TaskData:
    checked = {}
    for split, dataset in splits.items():
        if pair:
            text, text_pair = _pair_columns(args, dataset.column_names, split)
            args_for_split = _with(args, text_column=text, text_pair_column=text_pair)
        else:
            args_for_split = args
            if args.text_column is None and not {"sentence", "text"} & set(dataset.column_names):
                if any(a in dataset.column_names and b in dataset.column_names for a, b in _PAIR_GUESSES):
                    raise ValueError(
                        f"no text column: the {split} data has columns {dataset.column_names}, which look like "
                        "sentence pairs. Pass --task sentence-pair, or name the text with --text_column."
                    )
        text, text_pair, label = resolve_columns(_with(args_for_split, label_column=args.label_column or "label"),
                                                 dataset, split)  # fmt: skip
        labels = encode_labels(dataset[label], config, split, require_all=split == "train")
        checked[split] = (*_limited(dataset, labels, args, split), text, text_pair)
    encoded = {}
    for split, (dataset, labels, text, text_pair) in checked.items():
        if augment is not None and split == "train":  # the training split only, after every check
            columns = [c for c in (text, text_pair) if c]
            dataset = augment(dataset.select_columns(columns).add_column("label", labels), columns)
            labels = dataset["label"]
        encoded[split] = tokenize(dataset, tokenizer, text, text_pair, labels, args.max_seq_length)
    from transformers import DataCollatorWithPadding

    columns = {"text_column": text, "text_pair_column": text_pair, "label_column": label}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorWithPadding(tokenizer), columns)


def _with(args: DataArguments, **changes) -> DataArguments:
    return dataclasses.replace(args, **changes)


# ---- token classification ------------------------------------------------------------------------------------------


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


def _token_classification(splits, args: DataArguments, tokenizer, config, pair: bool) -> TaskData:
    from transformers import DataCollatorForTokenClassification

    _refuse(args, "token-classification", ("text_pair_column",))
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


def _encode_words(words: list[list[str]], word_labels: list[list[int]], tokenizer, max_length: int) -> Dataset:
    """Tokenise word lists; each word's label goes to its first sub-token, -100 to the others and to special tokens."""
    encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for i, row in enumerate(word_labels):
        previous, row_labels = None, []
        for word in encoding.word_ids(i):
            row_labels.append(IGNORE_INDEX if word is None or word == previous else row[word])
            previous = word
        labels.append(row_labels)
    return Dataset.from_dict({**encoding, "labels": labels})


# ---- question answering (a long context is several overlapping features, as transformers' run_qa.py) -----------


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


def _stride(questions: list[str], contexts: list[str], tokenizer, args: DataArguments, split: str) -> int:
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


def _question_answering(splits, args: DataArguments, tokenizer, config, pair: bool) -> TaskData:
    """One feature per window: `return_overflowing_tokens` with `stride=--doc_stride`, as run_qa.py's
    `prepare_train_features`; each feature is labelled with the answer's tokens when it holds the whole answer,
    else with CLS (0). `references` maps the evaluation features back to their examples."""
    from transformers import DataCollatorWithPadding

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


# ---- language modelling --------------------------------------------------------------------------------------------


class MaskedLMCollator:
    """Training rows are masked afresh by `DataCollatorForLanguageModeling`; rows that carry `labels` (the evaluation
    set, masked once) are only padded, so every model is scored on the same masked positions."""

    def __init__(self, tokenizer, mlm_probability: float = MLM_PROBABILITY) -> None:
        from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification

        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
        self.padding = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        return (self.padding if "labels" in features[0] else self.masking)(features)


def _texts(splits, args: DataArguments, tokenizer, task: str) -> tuple[dict[str, Dataset], str]:
    _refuse(args, task, ("text_pair_column", "label_column"))
    encoded = {}
    for split, dataset in splits.items():
        text = resolve_columns(_with(args, label_column=None), dataset, split)[0]
        dataset, _ = _limited(dataset, [], args, split)
        encoding = tokenizer([str(t) for t in dataset[text]], truncation=True, max_length=args.max_seq_length)
        encoded[split] = Dataset.from_dict(dict(encoding))
    return encoded, text


def _masked_lm(splits, args: DataArguments, tokenizer, config, pair: bool) -> TaskData:
    from transformers import DataCollatorForLanguageModeling

    if tokenizer.mask_token is None:
        raise ValueError(
            f"--task masked-lm replaces tokens with a mask token, but the tokenizer ({type(tokenizer).__name__}) "
            "has none. Use the teacher's masked-LM tokenizer (--tokenizer_name)."
        )
    encoded, text = _texts(splits, args, tokenizer, "masked-lm")
    masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=EVAL_MASKING_SEED)
    rows = [masking([row]) for row in encoded["validation"]]  # one draw per row, in order: the same in every run
    evaluation = encoded["validation"].remove_columns("input_ids").add_column(
        "input_ids", [r["input_ids"][0].tolist() for r in rows]
    ).add_column("labels", [r["labels"][0].tolist() for r in rows])  # fmt: skip
    if not any(label != IGNORE_INDEX for r in rows for label in r["labels"][0].tolist()):
        raise ValueError(
            f"masking {MLM_PROBABILITY:.0%} of the evaluation set's tokens left none masked: it is too small to "
            "score. Give more or longer evaluation texts (--validation_file, --max_eval_samples)."
        )
    columns = {"text_column": text, "text_pair_column": None, "label_column": None}
    return TaskData(encoded["train"], evaluation, MaskedLMCollator(tokenizer), columns)


def _causal_lm(splits, args: DataArguments, tokenizer, config, pair: bool) -> TaskData:
    from transformers import DataCollatorForLanguageModeling

    encoded, text = _texts(splits, args, tokenizer, "causal-lm")
    if all(len(ids) < 2 for ids in encoded["validation"]["input_ids"]):
        raise ValueError("every evaluation text is shorter than 2 tokens: there is no next token to score.")
    columns = {"text_column": text, "text_pair_column": None, "label_column": None}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorForLanguageModeling(tokenizer, mlm=False),
                    columns)  # fmt: skip
