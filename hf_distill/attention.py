"""Real, pre-dropout attention maps for the mapped layers, whatever attention kernel the model runs.

With `sdpa` or flash attention (the transformers 5.x defaults) `output_attentions=True` returns nothing, and in
training mode eager attention returns maps after dropout. Instead we hook the query and key projections of the
mapped layers only and recompute `softmax(Q K^T * scaling + padding mask)` in float32. The model itself still runs
its fast kernel; memory grows with the number of mapped layers, not with the model's depth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .modeling import SelfAttentionSpec, self_attention_spec

__all__ = ["AttentionRecorder", "ProjectionRecorder"]


class AttentionRecorder:
    """Records query/key projections of chosen layers during a forward pass and turns them into attention maps.

    Args:
        model (`nn.Module`): a transformers model (unwrapped).
        layer_indices (`Sequence[int]`): the blocks whose attention maps are wanted, in the order they are returned.
        scores (`bool`, *optional*, defaults to `False`): return the pre-softmax scores `Q K^T * scaling` (padded
            keys at the dtype's minimum) instead of the probabilities, for TinyBERT's loss.

    >>> recorder = AttentionRecorder(model, [1, 3])  # doctest: +SKIP
    >>> with recorder.recording():  # doctest: +SKIP
    ...     model(**batch)
    >>> maps = recorder.attention_maps(batch["attention_mask"])  # list of (B, H, T, T) float32  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layer_indices: Sequence[int], scores: bool = False) -> None:
        self.layer_indices = list(layer_indices)
        self.scores = scores
        self.specs: list[SelfAttentionSpec] = [self_attention_spec(model, i) for i in self.layer_indices]
        self._active = False
        self._queries: dict[int, torch.Tensor] = {}
        self._keys: dict[int, torch.Tensor] = {}
        self._handles = []
        for slot, spec in enumerate(self.specs):
            self._handles.append(spec.query.register_forward_hook(self._store(self._queries, slot)))
            self._handles.append(spec.key.register_forward_hook(self._store(self._keys, slot)))

    @property
    def num_heads(self) -> list[int]:
        return [spec.num_heads for spec in self.specs]

    def _store(self, store: dict[int, torch.Tensor], slot: int):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            if self._active:
                store[slot] = output

        return hook

    @contextmanager
    def recording(self) -> Iterator[AttentionRecorder]:
        """Capture projections during the forward passes run inside this block."""
        self._queries.clear()
        self._keys.clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def attention_maps(self, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Attention probabilities (or scores) of the recorded layers, each `(B, H, T, T)` float32, padded keys at 0.

        Raises:
            `RuntimeError` if a mapped layer did not run, so the attention term can never be silently zero.
        """
        missing = [self.layer_indices[s] for s in range(len(self.specs)) if s not in self._queries]
        if missing or len(self._keys) != len(self.specs):
            raise RuntimeError(
                f"no attention projections were captured for layers {missing or self.layer_indices}: the forward "
                "pass did not run them (early exit, layer drop, or a model that bypasses its q/k projections)."
            )
        device_type = self._queries[0].device.type
        with torch.autocast(device_type, enabled=False):  # float32 even inside an autocast region
            maps = [self._probabilities(s, spec, attention_mask) for s, spec in enumerate(self.specs)]
        self._queries.clear()
        self._keys.clear()
        return maps

    def _probabilities(self, slot: int, spec: SelfAttentionSpec, attention_mask: torch.Tensor | None) -> torch.Tensor:
        query, key = self._queries.pop(slot), self._keys.pop(slot)  # released layer by layer, not at the end
        batch, length, _ = query.shape
        # Scale q (B, H, T, D) rather than the scores (B, H, T, T), and add the padding mask: an addition's backward
        # is free, a masked_fill's is another pass over (B, H, T, T). Padded keys still get exactly 0 probability.
        q = (query.float() * spec.scaling).view(batch, length, spec.num_heads, spec.head_dim).transpose(1, 2)
        k = key.float().view(batch, length, spec.num_heads, spec.head_dim).transpose(1, 2)  # (B, H, T, D)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, T, T)
        if attention_mask is not None:
            padded_keys = ~attention_mask.to(scores.device).bool()[:, None, None, :]  # (B, 1, 1, T)
            additive = torch.zeros_like(padded_keys, dtype=scores.dtype).masked_fill(
                padded_keys, torch.finfo(scores.dtype).min
            )
            scores.add_(additive)  # in place: matmul's backward needs q and k, not its output; one map less at peak
        if spec.causal:  # a decoder: query i sees keys j <= i only
            future = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu_(1)  # (T, T)
            scores.masked_fill_(future, torch.finfo(scores.dtype).min)
        if self.scores:
            return scores
        if scores.requires_grad:
            return scores.softmax(dim=-1)
        # No gradient (the teacher): the same softmax computed in place, so scores and probabilities never coexist.
        scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
        return scores.div_(scores.sum(dim=-1, keepdim=True))

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class ProjectionRecorder:
    """Records the query, key and value projections of one layer for the self-relation terms (MiniLM, MiniLMv2).

    Args:
        model (`nn.Module`): a transformers model (unwrapped).
        layer_index (`int`): the block whose projections are wanted.

    After a forward pass inside `recording()`, `projections()` returns `{"query", "key", "value"}`, each `(B, T, D)`.
    """

    NAMES = ("query", "key", "value")

    def __init__(self, model: nn.Module, layer_index: int) -> None:
        self.layer_index = layer_index
        self.spec = self_attention_spec(model, layer_index)
        if self.spec.value is None:
            raise ValueError(
                f"layer {layer_index} of {type(model).__name__} has no value projection the relation term can read. "
                "Set relation_weight=0."
            )
        self._active = False
        self._store: dict[str, torch.Tensor] = {}
        modules = (self.spec.query, self.spec.key, self.spec.value)
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in zip(self.NAMES, modules)]

    def _hook(self, name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            if self._active:
                self._store[name] = output

        return hook

    @contextmanager
    def recording(self) -> Iterator[ProjectionRecorder]:
        self._store.clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def projections(self) -> dict[str, torch.Tensor]:
        """The recorded projections; raises if the layer did not run, so the term is never silently zero."""
        if len(self._store) != len(self.NAMES):
            raise RuntimeError(
                f"no query/key/value projections were captured for layer {self.layer_index}: the forward pass did "
                "not run it."
            )
        store, self._store = self._store, {}
        return store

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
