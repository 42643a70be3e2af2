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

# Config attribute holding the layer count: BERT/RoBERTa/ELECTRA/Llama/Qwen2, DistilBERT, GPT-2.
_LAYER_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layers", "n_layer")
# Config lists with one entry per layer (sliced to the chosen layers).
_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def build_student(teacher: PreTrainedModel, num_layers: int, layers: list[int] | None = None) -> PreTrainedModel:
    """A new model of the teacher's class with `num_layers` of its layers, initialised from the teacher.

    Embeddings, the chosen layers, the pooler, final norms and the task head are copied from the teacher; the
    teacher is left untouched. The chosen teacher layers are recorded in `student.config.distillation_teacher_layers`
    (and from there in `distillation_config.json` as `student_layers_from_teacher`).

    Args:
        teacher (`PreTrainedModel`): a BERT-family encoder (BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM) or a
            decoder-only model with a `layers` (Llama, Qwen2, Mistral) or `h` (GPT-2) list, with any task head.
        num_layers (`int`): number of layers of the student, `1 <= num_layers <= ` the teacher's.
        layers (`list[int]`, *optional*): the teacher layers to copy (0-indexed, increasing, `num_layers` of them).
            Defaults to an even spread that always keeps the last layer, `hf_distill.default_layer_map`:
            12 -> 6 copies `[1, 3, 5, 7, 9, 11]`.

    Returns:
        `PreTrainedModel`: the student, on the teacher's device and dtype, in the teacher's train/eval mode.

    >>> teacher = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")  # doctest: +SKIP
    >>> student = build_student(teacher, num_layers=6)  # doctest: +SKIP
    >>> student.config.distillation_teacher_layers  # doctest: +SKIP
    [1, 3, 5, 7, 9, 11]
    """
    teacher_layers = find_layers(teacher)  # raises for an unknown architecture
    num_teacher_layers = len(teacher_layers)
    layers = _check_layers(num_layers, layers, num_teacher_layers)
    config = _student_config(teacher, layers)

    student = type(teacher)._from_config(
        config, dtype=teacher.dtype, attn_implementation=teacher.config._attn_implementation
    )
    prefix = next(name for name, module in teacher.named_modules() if module is teacher_layers)
    student.load_state_dict(_renumbered_state_dict(teacher, prefix, layers), strict=True)
    student.to(teacher.device)
    student.train(teacher.training)
    return student


def _check_layers(num_layers: int, layers: list[int] | None, num_teacher_layers: int) -> list[int]:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"`num_layers` must be a positive integer, got {num_layers!r}.")
    if num_layers > num_teacher_layers:
        raise ValueError(
            f"`num_layers`={num_layers} is more than the teacher's {num_teacher_layers} layers: a student is built "
            f"from the teacher's own layers, so choose num_layers <= {num_teacher_layers}."
        )
    if layers is None:
        return default_layer_map(num_layers, num_teacher_layers)
    if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"`layers` must be a list of integers (teacher layer indices), got {layers!r}.")
    layers = list(layers)
    check_teacher_layers("layers", layers, num_layers, num_teacher_layers)
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"`layers` {layers} must be strictly increasing (each teacher layer once, in the teacher's order), "
            f"e.g. {default_layer_map(num_layers, num_teacher_layers)}."
        )
    return layers


def _student_config(teacher: PreTrainedModel, layers: list[int]):
    config = copy.deepcopy(teacher.config)
    attribute = next((a for a in _LAYER_COUNT_ATTRIBUTES if a in config.to_dict()), None)
    if attribute is None:
        raise ValueError(
            f"cannot tell how {type(config).__name__} stores its number of layers (looked for "
            f"{', '.join(_LAYER_COUNT_ATTRIBUTES)}); build the student yourself and pass it as the model."
        )
    setattr(config, attribute, len(layers))
    num_teacher_layers = len(find_layers(teacher))
    for name in _PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == num_teacher_layers:
            setattr(config, name, [values[i] for i in layers])
    config.distillation_teacher_layers = list(layers)
    return config


def _renumbered_state_dict(teacher: nn.Module, prefix: str, layers: list[int]) -> dict:
    """The teacher's state_dict with `prefix.<teacher index>.` renamed to `prefix.<student index>.`."""
    new_index = {teacher_index: student_index for student_index, teacher_index in enumerate(layers)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    state = {}
    for key, value in teacher.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(match.group(1))]}.{key[match.end() :]}"] = value
    return state
