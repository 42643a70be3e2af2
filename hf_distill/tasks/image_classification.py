"""Image classification: one label per image (ViT, DeiT, BEiT, ConvNeXt, Swin, ...), distilled per example.

Inputs are `pixel_values` `(B, C, H, W)` made by the teacher's image processor; logits `(B, C)`; the loss unit is the
example, and the teacher's class logits can be cached per example, as for text classification. The layer-wise terms
(attention maps, hidden states, self-relations) need a plain transformer encoder, one stack of equal layers whose
attention goes through transformers' attention interface (ViT, DeiT, BEiT-style): a convolutional network (ConvNeXt,
ResNet) has no attention and hierarchical models (Swin) have stages of different widths and windowed attention, so
for those only the logit terms (CE, KD) are allowed.

DeiT's `DeiTForImageClassificationWithTeacher` (a class token and a distillation token, each with its own head) is
accepted as a teacher, its logits being what its inference returns: the mean of the two heads. As a student it is
refused: hf-distill trains one head on one set of logits, so load the student with `AutoModelForImageClassification`
(`DeiTForImageClassification`, the class-token head).

In the `hf-distill` command the image column (a `datasets` `Image` feature, or file paths) goes through the
teacher's `AutoImageProcessor` (`hf_distill.image_data`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import losses
from ..task_metrics import TaskMetrics, accuracy, top_k_accuracy
from ..teacher_cache import EXAMPLE_LOGITS
from .base import Task, Terms, class_bound, class_terms, register_task

__all__ = ["IMAGE_CLASSIFICATION", "ImageClassification"]

TOP_K = 5  # top-5 accuracy, reported when there are more than 5 classes
_WITH_TEACHER = "ForImageClassificationWithTeacher"  # DeiT's two-head model


class ImageClassification(Task):
    name = "image-classification"
    auto_class = "AutoModelForImageClassification"
    class_suffixes = ("ForImageClassification", _WITH_TEACHER)
    label_bound = staticmethod(class_bound)  # the targets' ids are checked against it before training
    description = "one label per image (ViT, DeiT, ConvNeXt, Swin, ...), from an image column"
    pipeline_tag = "image-classification"
    teacher_cache = EXAMPLE_LOGITS
    processor_auto_class = "AutoImageProcessor"
    reads_text = False

    def check_models(self, student: Any, teacher: Any) -> None:
        """Single-label heads only; DeiT's two-head model only as the teacher; the same input images for both."""
        if type(student).__name__.endswith(_WITH_TEACHER):
            raise ValueError(
                f"the student is a {type(student).__name__}, DeiT's model with a class-token head and a "
                "distillation-token head, whose logits are their mean and which does not train: hf-distill trains one "
                "head. Load the student with AutoModelForImageClassification (DeiTForImageClassification); a "
                "WithTeacher model can be the teacher."
            )
        for who, model in (("student", student), ("teacher", teacher)):
            config = getattr(model, "config", None)
            problem = getattr(config, "problem_type", None)
            if getattr(config, "num_labels", 2) == 1 or problem in ("regression", "multi_label_classification"):
                raise ValueError(
                    f"the {who} is set up for {problem or 'regression'} (num_labels={config.num_labels}, "
                    f"problem_type={problem!r}); image classification is distilled with softmax cross-entropy and "
                    "softmax KL. Give both models num_labels >= 2 and problem_type='single_label_classification'."
                )
        s_config, t_config = student.config, teacher.config
        for name in ("num_channels", "image_size"):
            s_value, t_value = getattr(s_config, name, None), getattr(t_config, name, None)
            if s_value is not None and t_value is not None and s_value != t_value:
                raise ValueError(
                    f"the student has {name}={s_value} but the teacher {name}={t_value}: both models read the same "
                    f"pixel_values, made by the teacher's image processor. Build the student with {name}={t_value} "
                    "(build_student keeps it)."
                )

    def check_terms(self, student: Any, teacher: Any, args: Any) -> None:
        """The layer-wise terms need a plain transformer encoder on both sides (see the module docstring)."""
        wanted = [(name, getattr(args, name)) for name in ("gamma", "relation_weight", "hidden_weight")
                  if getattr(args, name) > 0]  # fmt: skip
        if not wanted:
            return
        for who, model in (("student", student), ("teacher", teacher)):
            problem = _layer_terms_problem(model)
            if problem:
                settings = ", ".join(f"{n}={v}" for n, v in wanted)
                raise ValueError(
                    f"the {who}, a {type(model).__name__}, {problem}. {settings} compares the models' layers: set "
                    f"{' and '.join(f'{n}=0' for n, _ in wanted)} to distil its logits (loss_ce, loss_kd), or use "
                    "recipe='logits'."
                )

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, Any]:
        """Per example: CE to the label (a `-100` label counts no unit) and Hinton's KD (`T^2 KL`) to the teacher."""
        labels = inputs["labels"] if self.has_labels(inputs) else None
        return class_terms(student[0], labels, teacher, temperature, weights)

    def metrics(self, config: Any, references=None) -> TaskMetrics:
        return TaskMetrics(self, "accuracy", config.num_labels)

    def preprocess_predictions(self, logits: Any, labels: Any) -> Any:
        """The classes ranked best first: `(B, 5)` when there are more than 5 classes, else the argmax `(B,)`."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if logits.shape[-1] > TOP_K:
            return logits.topk(TOP_K, dim=-1).indices
        return logits.argmax(dim=-1)

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        """`accuracy` of the best class, and `top5_accuracy` when there are more than 5 classes."""
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        keep = label_ids != losses.IGNORE_INDEX
        predictions, label_ids = predictions[keep], label_ids[keep]
        if predictions.ndim == 1:
            return {"accuracy": accuracy(predictions, label_ids)}
        return {"accuracy": accuracy(predictions[:, 0], label_ids),
                f"top{TOP_K}_accuracy": top_k_accuracy(predictions, label_ids)}  # fmt: skip

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """An image column (`Image` feature or file paths) and `label`, through the teacher's image processor
        (`tokenizer` here); see `hf_distill.image_data.image_classification_data`."""
        from ..image_data import image_classification_data

        return image_classification_data(splits, args, tokenizer, config)


def _layer_terms_problem(model: Any) -> str | None:
    """Why `model` cannot give the layer-wise terms (attention maps, hidden states of equal layers), or None."""
    from ..attention import check_attention_interface
    from ..modeling import find_layers

    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if heads is None:
        return "has no attention layers (a convolutional network)"
    if not isinstance(heads, int):
        return f"is hierarchical (stages with {heads} heads and windowed attention), not one stack of equal layers"
    try:
        layers = find_layers(model)
        check_attention_interface(model)
    except ValueError as error:
        return f"has no layer list or attention the terms can read ({error})"
    if len(layers) != getattr(config, "num_hidden_layers", None):
        return f"has {len(layers)} blocks where its config says num_hidden_layers={config.num_hidden_layers}"
    return None


IMAGE_CLASSIFICATION = register_task(ImageClassification())
