"""Building a smaller student from a teacher: fewer layers, every other weight copied.

The student is a new model of the teacher's class whose config is the teacher's with fewer layers. Its weights
are the teacher's `state_dict` with the layer indices renumbered, so embeddings, the chosen layers, the pooler,
final norms and the task head are exact copies (DistilBERT's initialisation, Sanh et al. 2019,
[arXiv:1910.01108](https://arxiv.org/abs/1910.01108)).
"""

from __future__ import annotations

import copy
import re

from torch import nn
from transformers import PreTrainedModel

from .modeling import check_teacher_layers, default_layer_map, find_layers

__all__ = ["build_student"]

# Config attribute holding the layer count: BERT/RoBERTa/ELECTRA/Llama/Qwen2, DistilBERT, GPT-2, then the encoder's
# of encoder-decoders (BART/Whisper, T5).
_LAYER_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layers", "n_layer", "encoder_layers", "num_layers")
# The decoder stack of encoder-decoders (relative to `base_model`) and its config count (BART/Whisper, T5).
_DECODER_PATHS = ("decoder.layers", "decoder.block")
_DECODER_COUNT_ATTRIBUTES = ("decoder_layers", "num_decoder_layers")
# Config lists with one entry per layer (sliced to the chosen layers).
_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def build_student(
    teacher: PreTrainedModel,
    num_layers: int,
    layers: list[int] | None = None,
    num_decoder_layers: int | None = None,
    decoder_layers: list[int] | None = None,
) -> PreTrainedModel:
    """A new model of the teacher's class with `num_layers` of its layers, initialised from the teacher.

    Embeddings, the chosen layers, the pooler, final norms and the task head are copied from the teacher; the
    teacher is left untouched. The chosen teacher layers are recorded in `student.config.distillation_teacher_layers`
    (and from there in `distillation_config.json` as `student_layers_from_teacher`).

    Where an architecture gives its first layer a structure of its own, the student's first slot keeps it: T5's
    relative position bias (stored in block 0) is copied from teacher block 0 whichever block fills the slot, and
    ModernBERT's first layer, which has no attention norm (the embeddings are normalised already), takes the chosen
    layer without its attention norm.

    Args:
        teacher (`PreTrainedModel`): a BERT-family encoder (BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM, ModernBERT),
            a decoder-only model with a `layers` (Llama, Qwen2, Mistral, OPT) or `h` (GPT-2) list, or an
            encoder-decoder (BART, T5, Whisper), with any task head.
        num_layers (`int`): number of layers of the student (of its encoder, for encoder-decoders),
            `1 <= num_layers <= ` the teacher's.
        layers (`list[int]`, *optional*): the teacher layers to copy (0-indexed, increasing, `num_layers` of them).
            Defaults to an even spread that always keeps the last layer, `hf_distill.default_layer_map`:
            12 -> 6 copies `[1, 3, 5, 7, 9, 11]`.
        num_decoder_layers (`int`, *optional*): for encoder-decoders, the student's decoder layers; defaults to
            `len(decoder_layers)` if given, else `num_layers` (capped at the teacher's decoder depth).
        decoder_layers (`list[int]`, *optional*): for encoder-decoders, the teacher decoder layers to copy; defaults
            to an even spread like `layers`. Recorded in `student.config.distillation_teacher_decoder_layers`.

    Returns:
        `PreTrainedModel`: the student, on the teacher's device and dtype, in the teacher's train/eval mode.

    Raises:
        `ValueError` for an impossible layer request, or a teacher without distinct layers (ALBERT shares one layer
        across depth).

    >>> teacher = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")  # doctest: +SKIP
    >>> student = build_student(teacher, num_layers=6)  # doctest: +SKIP
    >>> student.config.distillation_teacher_layers  # doctest: +SKIP
    [1, 3, 5, 7, 9, 11]
    """
    teacher_layers = find_layers(teacher)  # raises for an unknown architecture
    depths = getattr(teacher.config, "depths", None)
    if isinstance(depths, (list, tuple)):  # Swin's `encoder.layers` are stages, not equal layers
        raise ValueError(
            f"{type(teacher).__name__} is hierarchical: its stages (config.depths={list(depths)}) differ in width and "
            "resolution, so a student cannot be made of some of them. Build a smaller student yourself (e.g. fewer "
            "blocks per stage in config.depths) and pass it as the model."
        )
    layers = _check_layers(num_layers, layers, len(teacher_layers))
    stacks = [(teacher_layers, layers, _LAYER_COUNT_ATTRIBUTES)]
    teacher_decoder = _decoder_stack(teacher, teacher_layers)
    if teacher_decoder is None and (num_decoder_layers is not None or decoder_layers is not None):
        raise ValueError(
            f"`num_decoder_layers`/`decoder_layers` choose the decoder layers of an encoder-decoder, but "
            f"{type(teacher).__name__} has no decoder stack. Leave them unset."
        )
    if teacher_decoder is not None:
        if num_decoder_layers is None:
            num_decoder_layers = len(decoder_layers) if decoder_layers is not None else num_layers
            num_decoder_layers = min(num_decoder_layers, len(teacher_decoder))
        decoder_layers = _check_layers(num_decoder_layers, decoder_layers, len(teacher_decoder), "decoder_layers")
        stacks.append((teacher_decoder, decoder_layers, _DECODER_COUNT_ATTRIBUTES))
    config = _student_config(teacher, stacks)

    student = type(teacher)._from_config(
        config, dtype=teacher.dtype, attn_implementation=teacher.config._attn_implementation
    )
    state = teacher.state_dict()
    prefixes = {id(m): name for name, m in teacher.named_modules()}
    for stack, chosen, _ in stacks:
        state = _renumbered_state_dict(state, prefixes[id(stack)], chosen)
    student.load_state_dict(state, strict=True)
    student.to(teacher.device)
    student.train(teacher.training)
    return student


def _decoder_stack(teacher: nn.Module, encoder_layers: nn.ModuleList) -> nn.ModuleList | None:
    root = getattr(teacher, "base_model", teacher)
    for path in _DECODER_PATHS:
        module = root
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0 and module is not encoder_layers:
            return module
    return None


def _check_layers(
    num_layers: int, layers: list[int] | None, num_teacher_layers: int, option: str = "layers"
) -> list[int]:
    count_option = "num_layers" if option == "layers" else "num_decoder_layers"
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"`{count_option}` must be a positive integer, got {num_layers!r}.")
    if num_layers > num_teacher_layers:
        raise ValueError(
            f"`{count_option}`={num_layers} is more than the teacher's {num_teacher_layers} layers: a student is "
            f"built from the teacher's own layers, so choose {count_option} <= {num_teacher_layers}."
        )
    if layers is None:
        return default_layer_map(num_layers, num_teacher_layers)
    if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"`{option}` must be a list of integers (teacher layer indices), got {layers!r}.")
    layers = list(layers)
    check_teacher_layers(option, layers, num_layers, num_teacher_layers)
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"`{option}` {layers} must be strictly increasing (each teacher layer once, in the teacher's order), "
            f"e.g. {default_layer_map(num_layers, num_teacher_layers)}."
        )
    return layers


def _student_config(teacher: PreTrainedModel, stacks: list):
    config = copy.deepcopy(teacher.config)
    keys = config.to_dict()
    for position, (teacher_stack, chosen, attributes) in enumerate(stacks):
        attribute = next((a for a in attributes if a in keys), None)
        if attribute is None:
            raise ValueError(
                f"cannot tell how {type(config).__name__} stores its number of layers (looked for "
                f"{', '.join(attributes)}); build the student yourself and pass it as the model."
            )
        setattr(config, attribute, len(chosen))
        if position == 0:
            for name in _PER_LAYER_CONFIG_LISTS:
                values = getattr(config, name, None)
                if isinstance(values, (list, tuple)) and len(values) == len(teacher_stack):
                    setattr(config, name, [values[i] for i in chosen])
    config.distillation_teacher_layers = list(stacks[0][1])
    if len(stacks) > 1:
        config.distillation_teacher_decoder_layers = list(stacks[1][1])
    return config


def _renumbered_state_dict(state: dict, prefix: str, layers: list[int]) -> dict:
    """`state` with `prefix.<teacher index>.` renamed to `prefix.<student index>.` for the chosen layers.

    The first slot keeps the structure of the teacher's first layer: parameters only layer 0 has (T5's relative
    position bias) are copied from it, and parameters layer 0 lacks (ModernBERT's attention norm) are left out.
    """
    new_index = {teacher_index: student_index for student_index, teacher_index in enumerate(layers)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    renamed, first_layer = {}, {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            renamed[key] = value
            continue
        rest = key[match.end() :]
        if int(match.group(1)) == 0:
            first_layer[rest] = value
        if int(match.group(1)) in new_index:
            renamed[f"{prefix}.{new_index[int(match.group(1))]}.{rest}"] = value
    first_prefix = f"{prefix}.{layers[0]}."
    chosen_first = {k[len(first_prefix) :]: v for k, v in state.items() if k.startswith(first_prefix)}
    for rest in set(chosen_first) - set(first_layer):  # the first slot has no such parameter
        renamed.pop(f"{prefix}.0.{rest}")
    for rest in set(first_layer) - set(chosen_first):  # only the first layer has it
        renamed[f"{prefix}.0.{rest}"] = first_layer[rest]
    return renamed
