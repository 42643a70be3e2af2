"""Finding the pieces of a transformers model that distillation needs: its layer list and self-attention blocks.

No registry: a short list of the attribute paths used by the architectures we support, searched in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["check_teacher_layers", "count_parameters", "default_layer_map", "find_layers", "num_layers"]

# Where the list of transformer blocks lives, relative to `model.base_model`.
_LAYER_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, XLM-R, MiniLM, DeBERTa
    "transformer.layer",  # DistilBERT
    "layers",  # Llama, Qwen2, Mistral, Gemma (decoder-only)
    "h",  # GPT-2, GPT-Neo
    "encoder.layers",
    "decoder.layers",
)
# (query, key, value) projection names inside a self-attention block.
_PROJECTION_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
# Config signals that the attention scores also depend on something the projections do not show.
_UNSUPPORTED_POSITIONS = ("relative_key", "relative_key_query", "rotary")


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (e.g. `model.bert.encoder.layer` for BERT).

    Raises:
        `ValueError` naming the model class when no known layer list is found.
    """
    roots = [getattr(model, "base_model", model), model]
    for root in roots:
        for path in _LAYER_PATHS:
            layers = _get_path(root, path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    raise ValueError(
        f"cannot find the transformer layers of {type(model).__name__}: looked for "
        f"{', '.join(_LAYER_PATHS)} under `base_model`. Supported: BERT-family encoders (BERT, RoBERTa, ELECTRA, "
        "DistilBERT, MiniLM) and decoder-only models with a `layers` list."
    )


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks in `model`."""
    return len(find_layers(model))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once (the full size of a ZeRO-3 partitioned one)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += getattr(parameter, "ds_numel", None) or parameter.numel()
    return total


def default_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Uniform map: student layer `m` (0-indexed) learns from teacher layer `(m + 1) * L_t // L_s - 1`.

    The last student layer always matches the last teacher layer (TinyBERT's uniform strategy), e.g.
    12 -> 6 gives `[1, 3, 5, 7, 9, 11]`, 6 -> 3 gives `[1, 3, 5]`.
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError(
            f"layer counts must be positive, got student={num_student_layers}, teacher={num_teacher_layers}."
        )
    return [(m + 1) * num_teacher_layers // num_student_layers - 1 for m in range(num_student_layers)]


@dataclass
class SelfAttentionSpec:
    """The projections and geometry needed to recompute one block's attention probabilities."""

    query: nn.Linear
    key: nn.Linear
    num_heads: int
    head_dim: int
    scaling: float
    value: nn.Linear | None = None
    causal: bool = False  # a decoder's self-attention: query i sees keys j <= i only


def _heads_of(attention: nn.Module, query: nn.Linear, config) -> tuple[int, int]:
    heads = next(
        (getattr(attention, n) for n in ("num_attention_heads", "n_heads", "num_heads") if hasattr(attention, n)),
        None,
    )
    if heads is None:
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
    head_dim = next(
        (getattr(attention, n) for n in ("attention_head_size", "head_dim", "dim_per_head") if hasattr(attention, n)),
        None,
    )
    if head_dim is None and heads:
        head_dim = query.out_features // heads
    if not heads or not head_dim:
        raise ValueError(f"cannot tell the number of attention heads of {type(attention).__name__}.")
    return int(heads), int(head_dim)


def self_attention_spec(model: nn.Module, layer_index: int) -> SelfAttentionSpec:
    """Find the self-attention projections of block `layer_index` of `model`.

    Raises:
        `ValueError` when the block has no recognisable query/key projections, or when the model's attention
        scores depend on positions the projections do not carry (relative or rotary position embeddings).
    """
    config = getattr(model, "config", None)
    position_type = getattr(config, "position_embedding_type", "absolute")
    rotary = getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None)
    if position_type in _UNSUPPORTED_POSITIONS or rotary:
        raise ValueError(
            f"{type(model).__name__} uses {position_type if position_type != 'absolute' else 'rotary'} position "
            "embeddings, so its attention maps cannot be recomputed from the query/key projections. Set gamma=0 "
            "to distil it without the attention term."
        )
    layer = find_layers(model)[layer_index]
    for module in layer.modules():  # self-attention comes before any cross-attention in module order
        for q_name, k_name, v_name in _PROJECTION_NAMES:
            query, key = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(query, nn.Linear) and isinstance(key, nn.Linear):
                heads, head_dim = _heads_of(module, query, config)
                scaling = float(getattr(module, "scaling", head_dim**-0.5))
                if key.out_features != heads * head_dim:
                    raise ValueError(
                        f"{type(module).__name__} shares keys across heads (grouped-query attention); attention "
                        "maps of such models are not supported yet. Set gamma=0."
                    )
                value = getattr(module, v_name, None)
                value = value if isinstance(value, nn.Linear) else None
                causal = bool(getattr(module, "is_causal", False))
                return SelfAttentionSpec(query, key, heads, head_dim, scaling, value, causal)
    raise ValueError(
        f"layer {layer_index} of {type(model).__name__} has no query/key projections named "
        f"{', '.join(f'{q}/{k}' for q, k, _ in _PROJECTION_NAMES)}: the attention term cannot be computed. "
        "Set gamma=0 to distil without it."
    )


def check_teacher_layers(option: str, layers: list[int], student_layers: int, teacher_layers: int) -> None:
    """Raise unless `layers` names one valid teacher layer index per student layer (`option` names the argument)."""
    example = default_layer_map(student_layers, teacher_layers)
    if len(layers) != student_layers:
        raise ValueError(
            f"`{option}` {layers} has {len(layers)} entries but the student has {student_layers} layers: give one "
            f"teacher layer per student layer, e.g. {example}."
        )
    out_of_range = [i for i in layers if not 0 <= i < teacher_layers]
    if out_of_range:
        raise ValueError(
            f"`{option}` {layers} names teacher layers {out_of_range}, but the teacher has {teacher_layers} layers "
            f"(valid indices 0..{teacher_layers - 1}), e.g. {example}."
        )
