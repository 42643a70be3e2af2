"""Teacher-output cache: the teacher's logits on the training set, computed once, stored on disk, reused.

With `DistillationArguments(teacher_cache_dir=..., gamma=0)` the trainer runs the frozen teacher once over the
training set, stores its logits as a one-column `datasets` table under `teacher_cache_dir/<key>/`, and from then
on reads them as a `teacher_logits` column of the training set instead of running the teacher: in every epoch
and in every later run with the same key. A cached step costs a student step.

The key is a hash of everything that decides the logits, so a stale cache is never used:

* the teacher: class, configuration (public fields) and every tensor of its state dict;
* the data: the content of every column the collator receives (labels excepted), in row order, and its features;
  a dataset tokenised with another tokenizer or another `max_length` therefore gets another key;
* the tokenizer (`processing_class`): its vocabulary and normaliser/pre-tokeniser, its `model_max_length`, sides;
* the collator: its class (or function name) and its scalar settings (`max_length`, `padding`,
  `pad_to_multiple_of`, ...), not its code;
* the mixed-precision setting of the run and the cache format version.

For causal language models the logits are `(T, V)` per example, too large to store whole (GPT-2: 200 KB per
token), so the cache keeps, per position, the teacher's `k` most probable tokens with their log-probabilities at
the run's temperature and the log-probability of all the others (`teacher_top_k_*` columns,
`DistillationArguments.teacher_cache_top_k`, default 64: 0.5 KB per token); the KD term is then the KL over the
k kept tokens plus one tail bucket (`hf_distill.token_kd`; equal to the full KL when `k = V`). `k` and the
temperature join the key. Masked LMs are not cached: their collator masks other positions every epoch, so the
teacher's inputs change.

Attention maps are not cached: they are `(layers, heads, T, T)` per example, far too large to store, so the
cache needs `gamma = 0` (with `gamma > 0` the teacher must run every step anyway and a logits cache would save
nothing; `DistillationArguments` refuses the combination). The cache covers the training set only; evaluation
runs the teacher as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import atomic_write_text
from .labels import LABEL_COLUMNS  # excluded from the key: they do not change the teacher's logits

__all__ = [
    "EXAMPLE_LOGITS",
    "TOP_K_PER_TOKEN",
    "CacheFormat",
    "TEACHER_LOGITS",
    "TOP_K_COLUMNS",
    "TeacherLogitsCollator",
    "TeacherTopKCollator",
    "load_or_compute_teacher_logits",
    "teacher_cache_key",
]

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"  # the column (and batch key) holding the cached logits
# causal LMs: per position, the k kept token ids, their log-probabilities at T, and the log-probability of the rest
TOP_K_COLUMNS = ("teacher_top_k_indices", "teacher_top_k_log_probs", "teacher_top_k_tail")
CACHE_FORMAT = 1
_KEY_FILE = "cache_key.json"


# ---- the key ---------------------------------------------------------------------------------------------------


def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """sha256 of the teacher's class, public configuration and every state-dict tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(type(teacher).__qualname__.encode())
    config = getattr(teacher, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {
            k: v
            for k, v in config.to_dict().items()
            if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "architectures")
        }
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in teacher.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def _update_with_array(digest, array) -> None:
    """Hash an Arrow array by its logical values (independent of chunking, slicing and buffer padding)."""
    import pyarrow as pa

    kind = array.type
    digest.update(f"{kind}|{len(array)}|{array.null_count}".encode())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = array.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        digest.update(lengths.tobytes())
        _update_with_array(digest, array.flatten())
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        digest.update(np.ascontiguousarray(array.to_numpy(zero_copy_only=False)).tobytes())
    else:
        digest.update(json.dumps(array.to_pylist(), default=str).encode())


def data_fingerprint(dataset, exclude: tuple[str, ...] = LABEL_COLUMNS) -> str:
    """sha256 of a `datasets.Dataset`'s columns (those not in `exclude`), by value and in row order."""
    columns = [c for c in dataset.column_names if c not in exclude]
    digest = hashlib.sha256(json.dumps([len(dataset), columns, [str(dataset.features[c]) for c in columns]]).encode())
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=16_384):
        for name in columns:
            _update_with_array(digest, batch.column(name).combine_chunks())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 of what decides a tokenizer's ids: its backend definition (or vocabulary) and its length and sides."""
    if tokenizer is None:
        return None
    parts: list[Any] = [
        type(tokenizer).__qualname__,
        getattr(tokenizer, "model_max_length", None),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)  # call-time state a previous __call__ leaves behind, not identity
        definition.pop("padding", None)
        parts.append(definition)
    elif hasattr(tokenizer, "get_vocab"):
        parts.append(sorted(tokenizer.get_vocab().items()))
    else:
        parts.append(repr(tokenizer))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def collator_description(collator: Any) -> dict[str, Any]:
    """The collator's class (or function) name and its scalar settings, e.g. `max_length` and `padding`."""
    if collator is None:
        return {"name": None}
    target = collator if callable(collator) and hasattr(collator, "__qualname__") else type(collator)
    settings = {}
    if dataclasses.is_dataclass(collator) or not hasattr(collator, "__qualname__"):
        for name, value in sorted(vars(collator).items()):
            if isinstance(value, (bool, int, float, str, type(None))) and not name.startswith("_"):
                settings[name] = value
    return {"name": f"{target.__module__}.{target.__qualname__}", "settings": settings}


def teacher_cache_key(
    teacher: torch.nn.Module,
    dataset,
    tokenizer: Any = None,
    collator: Any = None,
    precision: str = "fp32",
    extra: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key of `teacher`'s logits on `dataset`, and the parts it was made from (saved beside the cache).

    Args:
        teacher (`nn.Module`): the frozen teacher.
        dataset (`datasets.Dataset`): the rows the collator receives (after `remove_unused_columns`).
        tokenizer (*optional*): the run's `processing_class`.
        collator (*optional*): the run's `data_collator`.
        precision (`str`, *optional*, defaults to `"fp32"`): the run's mixed-precision setting.
        extra (`dict`, *optional*): more settings that change what is cached (the top-k cache's `k` and `T`).

    Returns:
        `(key, parts)`: a 32-character hex key and a JSON-able dict of its components.
    """
    parts = {
        "format": CACHE_FORMAT,
        "teacher": teacher_fingerprint(teacher),
        "teacher_name_or_path": getattr(getattr(teacher, "config", None), "_name_or_path", None),
        "data": data_fingerprint(dataset),
        "num_rows": len(dataset),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "collator": collator_description(collator),
        "precision": precision,
        **(extra or {}),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return key, parts


# ---- computing, storing, loading ---------------------------------------------------------------------------------


def compute_teacher_logits(
    dataset, collator: Callable, forward: Callable[[dict], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """`forward` over `dataset` in batches of similar length (less padding); logits back in row order, float32 CPU."""
    order = np.arange(len(dataset))
    if "input_ids" in dataset.column_names:
        import pyarrow.compute as pc

        ids = dataset.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]
        order = np.argsort(pc.list_value_length(ids).to_numpy(zero_copy_only=False), kind="stable")
    loader = torch.utils.data.DataLoader(dataset.select(order), batch_size=batch_size, collate_fn=collator)
    with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws a seed: leave training's RNG untouched
        chunks = [forward(batch).detach().float().cpu() for batch in loader]
    logits = torch.cat(chunks)  # (N, C) in length order
    restored = torch.empty_like(logits)
    restored[torch.as_tensor(order)] = logits
    return restored


def compute_teacher_top_k(
    dataset, collator: Callable, forward: Callable[[dict], torch.Tensor], batch_size: int, k: int, temperature: float
) -> dict[str, list]:
    """Causal LMs: per example, the top-k summary (`token_kd.top_k_teacher`) of the teacher at each real position.

    Returns the `TOP_K_COLUMNS` as lists (one entry per row of `dataset`, in row order) of per-position lists.
    """
    from .token_kd import top_k_teacher

    columns: dict[str, list] = {name: [] for name in TOP_K_COLUMNS}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            logits = forward(batch).detach().float().cpu()  # (B, T, V)
            top = top_k_teacher(logits, min(k, logits.shape[-1]), temperature)
            mask = batch.get("attention_mask")
            real = torch.ones(logits.shape[:2], dtype=torch.bool) if mask is None else mask.cpu().bool()
            for b in range(logits.shape[0]):
                keep = real[b]
                columns[TOP_K_COLUMNS[0]].append(top.indices[b][keep].to(torch.int32).numpy())
                columns[TOP_K_COLUMNS[1]].append(top.log_probs[b][keep].numpy())
                columns[TOP_K_COLUMNS[2]].append(top.tail_log_prob[b][keep].numpy())
    return columns


def load_or_compute_teacher_logits(
    cache_dir: str | os.PathLike,
    key: str,
    parts: dict[str, Any],
    compute: Callable[[], torch.Tensor | dict[str, list]],
    columns: tuple[str, ...] | None = None,
):
    """The one-column (`teacher_logits`) dataset stored under `cache_dir/key`, computing and saving it if absent.

    Saving is atomic: the table is written to a temporary folder and renamed, so a crash or a concurrent run never
    leaves a half-written cache that a later run would read. `columns` are the stored columns (by default
    `TOP_K_COLUMNS` when `parts` has a `top_k`, else `TEACHER_LOGITS`); a stored table with others is recomputed.
    """
    from datasets import Dataset, load_from_disk

    folder = Path(cache_dir) / key
    if (folder / _KEY_FILE).is_file():
        stored = load_from_disk(str(folder))
        if columns is None:
            columns = TOP_K_COLUMNS if parts.get("top_k") else (TEACHER_LOGITS,)
        expected = list(columns)
        if len(stored) == parts["num_rows"] and stored.column_names == expected:
            logger.info("teacher logits: using the cache at %s", folder)
            return stored
        logger.warning("teacher logits: the cache at %s does not match its key file; recomputing it.", folder)
    logger.info("teacher logits: computing them for %d training rows (cached at %s)", parts["num_rows"], folder)
    logits = compute()
    stored = logits if isinstance(logits, dict) else {TEACHER_LOGITS: logits.numpy()}
    rows = len(next(iter(stored.values())))
    if rows != parts["num_rows"]:
        raise RuntimeError(f"the teacher produced {rows} rows of logits for {parts['num_rows']} rows.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    Dataset.from_dict(stored).save_to_disk(str(staging))
    atomic_write_text(staging / _KEY_FILE, json.dumps(parts, indent=2, sort_keys=True, default=str))
    if folder.exists():  # an incomplete or mismatched cache from before
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:  # another process saved the same key first: theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(str(folder))


def with_teacher_logits(dataset, logits):
    """`dataset` with the cached `teacher_logits` column appended (row for row), keeping its output format."""
    from datasets import concatenate_datasets

    combined = concatenate_datasets([dataset, logits], axis=1)
    fmt = dataset.format
    if fmt["type"] is not None:
        columns = None if fmt["columns"] is None else [*fmt["columns"], *logits.column_names]
        combined = combined.with_format(
            fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"]
        )
    return combined


class TeacherLogitsCollator:
    """Wraps a data collator: takes `teacher_logits` out of each row, collates the rest, adds them back stacked.

    So any collator works with the cache, including ones that drop keys they do not know.
    """

    def __init__(self, collator: Callable) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        logits = [torch.as_tensor(np.asarray(f[TEACHER_LOGITS]), dtype=torch.float32) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != TEACHER_LOGITS} for f in features])
        batch[TEACHER_LOGITS] = torch.stack(logits)  # (B, C)
        return batch


class TeacherTopKCollator:
    """Wraps a data collator for a causal LM's top-k cache: pads each row's per-position top-k summary to the batch.

    The cached positions are the example's real tokens, in order; they are placed where the collated batch's
    `attention_mask` is 1 (so left and right padding both work). Other positions get a harmless filler that the
    loss never reads: token 0 with log-probability 0 and an empty tail.
    """

    def __init__(self, collator: Callable) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        cached = [[np.asarray(f[name]) for name in TOP_K_COLUMNS] for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k not in TOP_K_COLUMNS} for f in features])
        batch_size, length = batch["input_ids"].shape
        k = cached[0][0].shape[-1]
        indices = torch.zeros(batch_size, length, k, dtype=torch.long)
        log_probs = torch.zeros(batch_size, length, k)
        tail = torch.full((batch_size, length), float("-inf"))
        mask = batch.get("attention_mask")
        for b, (ids, probs, rest) in enumerate(cached):
            positions = torch.arange(len(ids)) if mask is None else mask[b].bool().nonzero().squeeze(1)
            if len(positions) != len(ids):
                raise ValueError(
                    f"the teacher cache holds {len(ids)} positions for a row whose batch has {len(positions)} real "
                    "tokens: the collator changed the row's tokens (e.g. truncation) after the cache was built."
                )
            indices[b, positions] = torch.as_tensor(ids, dtype=torch.long)
            log_probs[b, positions] = torch.as_tensor(probs, dtype=torch.float32)
            tail[b, positions] = torch.as_tensor(rest, dtype=torch.float32)
        batch.update(zip(TOP_K_COLUMNS, (indices, log_probs, tail)))
        return batch


def top_k_teacher_of(batch: dict[str, Any]):
    """The cached `TopKTeacher` of a collated batch, or `None` when the batch holds no top-k cache."""
    if TOP_K_COLUMNS[0] not in batch:
        return None
    from .token_kd import TopKTeacher

    return TopKTeacher(*(batch[name] for name in TOP_K_COLUMNS))


# ---- the formats a task's teacher outputs are cached in (`Task.teacher_cache`) --------------------------------------


class CacheFormat:
    """How a task's teacher outputs are stored: the columns, the collator wrapper, the key's extra settings and how
    to compute them from the teacher's `forward(batch) -> logits`."""

    description: str
    columns: tuple[str, ...]

    def collator(self, collator: Callable) -> Callable:
        raise NotImplementedError

    def key_extra(self, args: Any) -> dict[str, Any] | None:
        """The settings besides teacher, data, tokenizer, collator and precision that change what is stored."""
        return None

    def compute(self, dataset, collator: Callable, forward: Callable, batch_size: int, args: Any):
        raise NotImplementedError


class _ExampleLogits(CacheFormat):
    description = "class logits per example"
    columns = (TEACHER_LOGITS,)

    def collator(self, collator: Callable) -> Callable:
        return TeacherLogitsCollator(collator)

    def compute(self, dataset, collator: Callable, forward: Callable, batch_size: int, args: Any) -> torch.Tensor:
        return compute_teacher_logits(dataset, collator, forward, max(batch_size, 32))


class _TopKPerToken(CacheFormat):
    description = "a top-k summary per token"
    columns = TOP_K_COLUMNS

    def collator(self, collator: Callable) -> Callable:
        return TeacherTopKCollator(collator)

    def key_extra(self, args: Any) -> dict[str, Any]:  # a top-k summary at T: both join the key
        return {"top_k": args.teacher_cache_top_k, "temperature": args.temperature}

    def compute(self, dataset, collator: Callable, forward: Callable, batch_size: int, args: Any) -> dict[str, list]:
        return compute_teacher_top_k(dataset, collator, forward, batch_size, args.teacher_cache_top_k,
                                     args.temperature)  # fmt: skip


EXAMPLE_LOGITS = _ExampleLogits()  # sequence classification: `(C,)` logits per row
TOP_K_PER_TOKEN = _TopKPerToken()  # causal LMs: per real position, the k most probable tokens and a tail


def check_cacheable(train_dataset) -> None:
    """Refuse, before any work, a training set the cache cannot attach a column to."""
    from datasets import Dataset

    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            f"`teacher_cache_dir` needs the training set as a `datasets.Dataset`, got {type(train_dataset).__name__}. "
            "Convert it (e.g. `Dataset.from_dict`, `Dataset.from_list`) or leave teacher_cache_dir unset."
        )
    taken = [c for c in (TEACHER_LOGITS, *TOP_K_COLUMNS) if c in train_dataset.column_names]
    if taken:
        raise ValueError(
            f"the training set already has a {taken[0]!r} column, which the teacher cache would add. Remove or "
            "rename it, or leave teacher_cache_dir unset."
        )
