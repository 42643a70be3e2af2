"""Real, pre-dropout attention maps (and Q/K/V) of the mapped layers, recorded through the attention interface.

transformers 5.x runs every layer's attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`: the
function receives the queries and keys after rotary embeddings, the keys and values before grouped-query expansion,
T5's `position_bias` and the model's full mask (causal, sliding window, padding), as built by the mask function
registered under the same name. While a recorder is recording, the model runs our registered function instead: it
keeps those inputs for the mapped layers only and computes the output with the stock `sdpa` kernel. The maps are
rebuilt afterwards in float32 exactly as eager attention would (`softmax(q k^T * scaling + bias + mask)`), so memory
grows with the number of mapped layers, not with the model's depth, and `output_attentions` is never needed.

MPNet computes its relative-position attention in its own code, outside the interface: its mapped layers are
recorded with forward hooks instead (the attention module's mask and position bias, the outputs of its q/k/v
projections), which feed the same rebuild. Other models whose attention does not go through the interface
(DeBERTa-v2: disentangled content/position attention) are refused when the recorder is built.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import DistillationSettingError
from .modeling import AttentionGeometry, attention_geometry, find_layers

__all__ = ["AttentionRecorder", "ProjectionRecorder"]

RECORDING_IMPLEMENTATION = "hf_distill_recording"
# id(module inside a mapped layer) -> the capture callbacks of the recorders recording it right now
_CAPTURES: dict[int, list[Callable]] = {}
# id(config) -> [the implementations to restore, number of recorders that switched it]
_SWITCHED: dict[int, list] = {}


def _recording_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    for capture in _CAPTURES.get(id(module), ()):
        capture(module, query, key, value, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(RECORDING_IMPLEMENTATION, _recording_attention)
AttentionMaskInterface.register(RECORDING_IMPLEMENTATION, sdpa_mask)  # or the model would get no mask at all


@dataclass
class _Call:
    """What one layer's self-attention call received (query, key, value each `(B, heads, T, D)`)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor | None  # kept only for the relation terms: holding it would cost a (B, T, D) per layer
    mask: torch.Tensor | None  # boolean (True = attend) or additive, broadcastable to (B, H, T, S)
    position_bias: torch.Tensor | None
    scaling: float
    causal: bool  # sdpa's own `is_causal`: applies only when no mask was given


def _own_code_attention(layer: nn.Module) -> nn.Module | None:
    """The self-attention module of `layer` when it is one whose code the hooks below know (MPNet's), else `None`."""
    for module in layer.modules():
        if type(module).__name__ == "MPNetSelfAttention" and all(
            isinstance(getattr(module, name, None), nn.Linear) for name in ("q", "k", "v")
        ):
            return module
    return None


def check_attention_interface(model: nn.Module) -> None:
    """Raise unless `model`'s layers run their attention through transformers' attention interface (or through
    attention code the recorder hooks: MPNet's)."""
    layer = find_layers(model)[0]
    if _own_code_attention(layer) is not None:
        return
    # The class's own module, or a base's: FSDP2 swaps each sharded module's class for a subclass of its own.
    if any(hasattr(sys.modules.get(cls.__module__), "ALL_ATTENTION_FUNCTIONS") for cls in type(layer).__mro__):
        return
    config = getattr(model, "config", None)
    relative = (
        getattr(config, "relative_attention", False)  # DeBERTa(-v2): disentangled content/position attention
        or getattr(config, "relative_attention_num_buckets", None) is not None  # relative position bias buckets
        or str(getattr(config, "position_embedding_type", "")).startswith("relative")
    )
    reason = f"computes {'relative position' if relative else 'its'} attention in its own code"
    raise DistillationSettingError(
        f"{type(model).__name__} {reason}, outside transformers' attention interface, so its real attention maps "
        "and query/key/value states cannot be recorded. Set gamma=0 and relation_weight=0 to distil it with the "
        "logit and hidden-state terms (recipe='logits' distils the logits alone).",
        ("gamma", "relation_weight"),
    )


class _InterfaceRecorder:
    """Keeps the first attention-interface call of each chosen layer while recording."""

    keeps_values = False

    def __init__(self, model: nn.Module, layer_indices: Sequence[int]) -> None:
        check_attention_interface(model)
        self.model = model
        self.layer_indices = list(layer_indices)
        self.geometry: AttentionGeometry = attention_geometry(model)
        layers = find_layers(model)
        # Every submodule of a mapped layer: the interface is called with the attention module, found by identity.
        self._modules = [list(layers[i].modules()) for i in self.layer_indices]
        # MPNet: each mapped layer's own attention module, recorded by hooks rather than through the interface.
        own_code = [_own_code_attention(layers[i]) for i in self.layer_indices]
        self._hooked = own_code if all(m is not None for m in own_code) else None
        self._calls: dict[int, _Call] = {}
        # Every config the model's modules read the implementation from (T5's stacks hold copies of the model's).
        configs = (getattr(module, "config", None) for module in model.modules())
        self._configs = list({id(c): c for c in configs if hasattr(c, "_attn_implementation")}.values())

    def _capture(self, slot: int) -> Callable:
        def capture(module, query, key, value, mask, kwargs: dict[str, Any]) -> None:
            if slot in self._calls:  # a decoder layer's cross-attention comes after its self-attention
                return
            is_causal = kwargs.get("is_causal")
            is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
            scaling = kwargs.get("scaling")
            scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
            value = value if self.keeps_values else None
            self._calls[slot] = _Call(
                query, key, value, mask, kwargs.get("position_bias"), float(scaling), bool(is_causal)
            )

        return capture

    @contextmanager
    def recording(self) -> Iterator[_InterfaceRecorder]:
        """Record the mapped layers during the forward passes run inside this block (the model's attention runs
        through `sdpa` meanwhile, whatever its configured implementation)."""
        self._calls.clear()
        if self._hooked is not None:
            with self._hooks():
                yield self
            return
        captures = [(id(m), self._capture(slot)) for slot, modules in enumerate(self._modules) for m in modules]
        with ExitStack() as stack:
            for config in self._configs:
                stack.enter_context(_recording_implementation(config))
            for key, capture in captures:
                _CAPTURES.setdefault(key, []).append(capture)
            try:
                yield self
            finally:
                for key, capture in captures:
                    _CAPTURES[key].remove(capture)
                    if not _CAPTURES[key]:
                        del _CAPTURES[key]

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        """Record MPNet-style attention modules: `softmax(q k^T / sqrt(d) + position_bias + mask)`, no dropout yet."""
        handles = []
        for slot, attention in enumerate(self._hooked):
            pending: dict[str, Any] = {}

            def before(module, args, kwargs, slot=slot, pending=pending) -> None:
                bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
                pending.clear()
                pending.update(mask=bound.get("attention_mask"), position_bias=bound.get("position_bias"))

            def projected(name: str, slot=slot, pending=pending, attention=attention) -> Callable:
                def hook(linear, args, output) -> None:
                    if slot in self._calls or "mask" not in pending:
                        return
                    batch, length = output.shape[:2]
                    heads = attention.num_attention_heads
                    pending[name] = output.view(batch, length, heads, -1).transpose(1, 2)  # (B, H, T, D)
                    if name == "value":
                        value = pending["value"] if self.keeps_values else None
                        scaling = attention.attention_head_size**-0.5
                        self._calls[slot] = _Call(pending["query"], pending["key"], value, pending["mask"],
                                                  pending["position_bias"], scaling, causal=False)  # fmt: skip
                        pending.clear()

                return hook

            handles.append(attention.register_forward_pre_hook(before, with_kwargs=True))
            for name, linear in (("query", attention.q), ("key", attention.k), ("value", attention.v)):
                handles.append(linear.register_forward_hook(projected(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _take_calls(self) -> list[_Call]:
        missing = [self.layer_indices[s] for s in range(len(self.layer_indices)) if s not in self._calls]
        if missing:
            raise RuntimeError(
                f"no attention was recorded for layers {missing} of {type(self.model).__name__}: the forward pass did "
                "not run them through the attention interface (early exit, layer drop, or no forward inside "
                "`recording()`)."
            )
        calls, self._calls = [self._calls[s] for s in range(len(self.layer_indices))], {}
        return calls


@contextmanager
def _recording_implementation(config) -> Iterator[None]:
    """Switch `config` (and its sub-configs) to the recording attention while at least one recorder records."""
    key = id(config)
    if key not in _SWITCHED:
        saved = {"": config._attn_implementation}
        for name in getattr(config, "sub_configs", {}):
            if getattr(config, name, None) is not None:
                saved[name] = getattr(config, name)._attn_implementation
        _SWITCHED[key] = [saved, 0]
        config._attn_implementation = RECORDING_IMPLEMENTATION
    _SWITCHED[key][1] += 1
    try:
        yield
    finally:
        _SWITCHED[key][1] -= 1
        if _SWITCHED[key][1] == 0:
            config._attn_implementation = _SWITCHED.pop(key)[0]


class AttentionRecorder(_InterfaceRecorder):
    """Records the attention of chosen layers during a forward pass and returns their maps as eager attention would.

    Args:
        model (`nn.Module`): a transformers model (unwrapped) whose attention goes through the attention interface.
        layer_indices (`Sequence[int]`): the blocks whose attention maps are wanted, in the order they are returned.
        scores (`bool`, *optional*, defaults to `False`): return the pre-softmax scores `q k^T * scaling + bias`
            (masked keys at the float32 minimum) instead of the probabilities, for TinyBERT's loss.

    >>> recorder = AttentionRecorder(model, [1, 3])  # doctest: +SKIP
    >>> with recorder.recording():  # doctest: +SKIP
    ...     model(**batch)
    >>> maps = recorder.attention_maps()  # list of (B, H, T, T) float32  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layer_indices: Sequence[int], scores: bool = False) -> None:
        super().__init__(model, layer_indices)
        self.scores = scores

    @property
    def num_heads(self) -> list[int]:
        return [self.geometry.num_heads] * len(self.layer_indices)

    def attention_maps(self) -> list[torch.Tensor]:
        """Attention probabilities (or scores) of the recorded layers, each `(B, H, T, T)` float32, masked keys at 0.

        Raises:
            `RuntimeError` if a mapped layer did not run, so the attention term can never be silently zero.
        """
        calls = self._take_calls()
        with torch.autocast(calls[0].query.device.type, enabled=False):  # float32 even inside an autocast region
            maps = []
            while calls:  # each layer's inputs are released as soon as its map exists, not at the end
                maps.append(self._probabilities(calls.pop(0)))
        return maps

    def _probabilities(self, call: _Call) -> torch.Tensor:
        query, key = call.query, call.key  # (B, H, T, D), (B, H_kv, S, D)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: head h reads key head h // groups
            key = key.repeat_interleave(groups, dim=1)
        # Scale q (B, H, T, D) rather than the scores (B, H, T, S), and change the scores in place: matmul's backward
        # needs q and k, not its output, so one map less is alive at the peak.
        scores = torch.matmul(query.float() * call.scaling, key.float().transpose(-1, -2))  # (B, H, T, S)
        if call.position_bias is not None:  # T5's and MPNet's relative position bias
            scores = scores + call.position_bias.float()
        minimum = torch.finfo(scores.dtype).min
        if call.mask is not None:
            if call.mask.dtype == torch.bool:  # sdpa masks: True where the query may attend
                scores.masked_fill_(~call.mask.to(scores.device), minimum)
            else:  # additive masks (0 or the dtype's minimum)
                scores.add_(call.mask.float().to(scores.device)).clamp_(min=minimum)
        elif call.causal and scores.shape[-2] > 1:  # sdpa's is_causal, used when the mask was skipped
            length, kv_length = scores.shape[-2:]
            future = torch.ones(length, kv_length, dtype=torch.bool, device=scores.device).triu_(1)
            scores.masked_fill_(future, minimum)
        if self.scores:
            return scores
        if scores.requires_grad:
            return scores.softmax(dim=-1)
        # No gradient (the teacher): the same softmax computed in place, so scores and probabilities never coexist.
        scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
        return scores.div_(scores.sum(dim=-1, keepdim=True))


class ProjectionRecorder(_InterfaceRecorder):
    """Records the queries, keys and values one layer's attention uses, for the self-relation terms (MiniLM, MiniLMv2).

    They are what the attention itself reads: queries and keys after rotary position embeddings, keys and values
    before grouped-query expansion (so their width is `num_key_value_heads * head_dim`).

    Args:
        model (`nn.Module`): a transformers model (unwrapped).
        layer_index (`int`): the block whose states are wanted.

    After a forward pass inside `recording()`, `projections()` returns `{"query", "key", "value"}`, each `(B, T, D)`.
    """

    NAMES = ("query", "key", "value")
    keeps_values = True

    def __init__(self, model: nn.Module, layer_index: int) -> None:
        super().__init__(model, [layer_index])
        self.layer_index = layer_index
        self.causal: bool | None = None  # known after the first recorded call

    def projections(self) -> dict[str, torch.Tensor]:
        """The recorded states, each `(B, T, heads * D)`; raises if the layer did not run."""
        (call,) = self._take_calls()
        self.causal = call.causal
        states = {"query": call.query, "key": call.key, "value": call.value}  # (B, heads, T, D)
        return {name: s.transpose(1, 2).flatten(2) for name, s in states.items()}  # (B, T, heads * D)
