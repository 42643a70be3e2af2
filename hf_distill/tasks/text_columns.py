"""The text columns of the `hf-distill` command's example-level tasks whose labels are not class ids.

Regression (STS-B) and multi-label classification read one text column, or two for pairs: `--text_column`
(default `sentence` or `text`) and `--text_pair_column`; with neither given and no `sentence`/`text` column, a known
pair (`sentence1`/`sentence2`, `question`/`sentence`, `premise`/`hypothesis`) is used. Command helpers (`datasets`,
`task_data`) are imported inside the functions, so importing the library never imports the command.
"""

from __future__ import annotations

from typing import Any

from .sequence_classification import _PAIR_GUESSES

__all__ = ["encode_texts", "text_columns"]

_SINGLE_GUESSES = ("sentence", "text")


def text_columns(args: Any, columns: list[str], split: str, task: str) -> tuple[str, str | None]:
    """`(text, text_pair)` column names of one split, each checked to exist."""
    for option in ("text_column", "text_pair_column"):
        given = getattr(args, option)
        if given is not None and given not in columns:
            raise ValueError(f"--{option}={given!r} is not a column of the {split} data; its columns are {columns}. "
                             f"Name the text with --text_column (and the second text of pairs with "
                             "--text_pair_column).")  # fmt: skip
    single = next((c for c in _SINGLE_GUESSES if c in columns), None)
    pair = next(((a, b) for a, b in _PAIR_GUESSES if a in columns and b in columns), None)
    if args.text_pair_column is not None:
        first = args.text_column or (pair[0] if pair else single)
        if first is None:
            raise ValueError(
                f"--text_pair_column={args.text_pair_column!r} names the second text, but the {split} "
                f"data has no first one among its columns {columns}: name it with --text_column."
            )
        return first, args.text_pair_column
    if args.text_column is not None:
        return args.text_column, None
    if single is not None:
        return single, None
    if pair is not None:
        return pair
    guesses = ", ".join(["/".join(_SINGLE_GUESSES), *("/".join(p) for p in _PAIR_GUESSES)])
    raise ValueError(
        f"no text column for --task {task}: the {split} data has columns {columns}, none of {guesses}. Name the text "
        "with --text_column (and a second text with --text_pair_column)."
    )


def encode_texts(dataset, text: str, text_pair: str | None, labels: list, tokenizer, max_length: int):
    """Tokenise `text` (and `text_pair`) without padding and add `labels` (one float, or a list of floats, per row)."""
    from ..data import tokenize

    return tokenize(dataset, tokenizer, text, text_pair, labels, max_length)
