"""Finding the pieces of a transformers model that distillation needs: its layer list and self-attention blocks.

No registry: a short list of the attribute paths used by the architectures we support, searched in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = [
    "embedding_rows",
    "attention_geometry",
    "check_teacher_layers",
    "count_parameters",
    "default_layer_map",
    "find_layers",
    "num_layers",
]

# Where the list of transformer blocks lives, relative to `model.base_model`.
_LAYER_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, XLM-R, MiniLM, DeBERTa
    "transformer.layer",  # DistilBERT
    "layers",  # Llama, Qwen2, Mistral, Gemma (decoder-only)
    "h",  # GPT-2, GPT-Neo
    "encoder.block",  # T5
    "encoder.layers",
    "decoder.layers",
)


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
    config = getattr(model, "config", None)
    if getattr(config, "num_hidden_groups", None) is not None:  # ALBERT
        raise ValueError(
            f"{type(model).__name__} shares its layer weights across depth ({config.num_hidden_layers} passes through "
            f"{config.num_hidden_groups} shared layer group(s)), so it has no list of distinct layers for the "
            "layer-wise terms (attention, relations, hidden_loss='mse') or build_student to use. Distil it with the "
            "logit terms, and hidden_loss='cosine' (the last hidden state) if you want a hidden-state term."
        )
    raise ValueError(
        f"cannot find the transformer layers of {type(model).__name__}: looked for "
        f"{', '.join(_LAYER_PATHS)} under `base_model`. Supported: BERT-family encoders (BERT, RoBERTa, ELECTRA, "
        "DistilBERT, MiniLM) and decoder-only models with a `layers` list."
    )


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks in `model`."""
    return len(find_layers(model))


def count_layers(model: nn.Module) -> int | None:
    """Depth of `model` for records and model cards: its layer list's length, else its config's layer count (ALBERT
    shares one layer across `num_hidden_layers`), else None."""
    try:
        return num_layers(model)
    except ValueError:
        count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        return count if isinstance(count, int) else None


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
class AttentionGeometry:
    """The head layout of a model's self-attention, from its config."""

    num_heads: int
    num_key_value_heads: int  # fewer than num_heads with grouped-query attention
    head_dim: int

    @property
    def widths(self) -> dict[str, int]:
        """Width of the query, key and value states the attention reads (`heads * head_dim`)."""
        kv_width = self.num_key_value_heads * self.head_dim
        return {"query": self.num_heads * self.head_dim, "key": kv_width, "value": kv_width}


def attention_geometry(model: nn.Module) -> AttentionGeometry:
    """Heads, key/value heads and head width of `model`'s self-attention, read from its config.

    Raises:
        `ValueError` when the config does not say how many attention heads the model has.
    """
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"cannot tell the number of attention heads of {type(model).__name__} from its config.")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttentionGeometry(heads, int(kv_heads), int(head_dim))


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


def embedding_rows(model: nn.Module) -> int | None:
    """How many token ids `model` can read: its input embedding's rows (else `config.vocab_size`)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)
