"""Tiny BERT-family models and data built in code (no Hub), shared by the tests."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

VOCAB_SIZE = 64
BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4, in BERT's order


def tiny_bert(num_layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0, **overrides):
    """A randomly initialised BertForSequenceClassification; default attention implementation (sdpa)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        **{"num_labels": 2, "initializer_range": 0.3, **overrides},  # wide init: peaked, distinct attention maps
    )
    return BertForSequenceClassification(config)


def wordpiece_tokenizer(
    folder: Path, tokens: Iterable[str], size: int | None = None, filler: str = "##x"
) -> BertTokenizerFast:
    """Specials, `tokens`, `filler`{i} to `size` in `folder`/vocab.txt; read by `vocab=` (5.x ignores `vocab_file`)."""
    vocab = [*BERT_SPECIAL_TOKENS, *tokens]
    if size is not None:
        if len(vocab) > size:
            raise ValueError(f"{len(vocab)} tokens (special tokens included) do not fit in size={size}")
        vocab += [f"{filler}{i}" for i in range(size - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def recorded_and_eager_maps(model, layers: list[int], **inputs) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The maps `AttentionRecorder` records for `layers` under the model's own kernel, then every layer's eager
    `output_attentions` (an encoder-decoder's encoder attentions): the reference they must equal."""
    from hf_distill.attention import AttentionRecorder

    recorder = AttentionRecorder(model, layers)
    with recorder.recording(), torch.no_grad():
        model(**inputs)
    recorded = recorder.attention_maps()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    return recorded, outputs.encoder_attentions if "encoder_attentions" in outputs else outputs.attentions


def random_rows(n: int, seed: int = 0, min_len: int = 3, max_len: int = 12) -> dict[str, list]:
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids.append([2] + [rng.randint(5, VOCAB_SIZE - 1) for _ in range(length - 2)] + [3])
        labels.append(int(sum(ids[-1]) % 2))
    return {"input_ids": ids, "label": labels}


def pad_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest row, like DataCollatorWithPadding, without a tokenizer.

    `label` (one per example) becomes `labels`; `labels` (one per token) is padded with -100; QA's
    `start_positions` / `end_positions` pass through."""
    length = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.tensor([f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features]
        ),
    }
    if "label" in features[0]:
        batch["labels"] = torch.tensor([f["label"] for f in features])
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] + [-100] * (length - len(f["labels"])) for f in features])
    for key in ("start_positions", "end_positions"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features])
    return batch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a CPU shared with other jobs. Files of tiny-model
    tests take it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def teacher():
    return tiny_bert(num_layers=4, seed=1)


@pytest.fixture
def student():
    return tiny_bert(num_layers=2, seed=2)


@pytest.fixture
def dataset():
    return Dataset.from_dict(random_rows(32, seed=3))
