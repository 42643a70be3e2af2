"""`DistillationSeq2SeqTrainer`: `DistillationTrainer` with `Seq2SeqTrainer`'s generation (T5, BART, Marian, Whisper).

The loss is `DistillationTrainer`'s (the seq2seq task: token-level KD and CE on the decoder's logits under teacher
forcing, see `hf_distill.tasks.seq2seq`); evaluation and prediction are `Seq2SeqTrainer`'s: with
`predict_with_generate` the predictions are generated token ids (`generation_max_length`, `generation_num_beams`,
`generation_config`), and the student's generation config is saved beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, Seq2SeqTrainingArguments

from . import tasks
from .args import DistillationArguments
from .trainer import DistillationTrainer

__all__ = ["DistillationSeq2SeqArguments", "DistillationSeq2SeqTrainer", "seq2seq_arguments"]

_DECODER_KEYS = ("labels", "decoder_input_ids", "decoder_attention_mask")


@dataclass
class DistillationSeq2SeqArguments(DistillationArguments, Seq2SeqTrainingArguments):
    """[`DistillationArguments`] plus [`~transformers.Seq2SeqTrainingArguments`]' fields (`predict_with_generate`,
    `generation_max_length`, `generation_num_beams`, `generation_config`, `sortish_sampler`), for
    [`DistillationSeq2SeqTrainer`]. Both sets of fields are inherited, none is redefined.

    >>> args = DistillationSeq2SeqArguments("out", predict_with_generate=True, temperature=2.0)  # doctest: +SKIP
    """


def seq2seq_arguments(args: DistillationArguments, **changes: Any) -> DistillationSeq2SeqArguments:
    """`args` as `DistillationSeq2SeqArguments` (the seq2seq fields at their defaults) with `changes` applied; the
    values in `args` are taken as they are, already checked, without running `__post_init__` again."""
    new = object.__new__(DistillationSeq2SeqArguments)
    new.__dict__.update(args.__dict__)
    for spec in dataclasses.fields(Seq2SeqTrainingArguments):
        if spec.name not in new.__dict__:
            new.__dict__[spec.name] = spec.default
    unknown = set(changes) - {spec.name for spec in dataclasses.fields(DistillationSeq2SeqArguments)}
    if unknown:
        raise TypeError(f"seq2seq_arguments got unknown field(s) {sorted(unknown)}.")
    new.__dict__.update(changes)
    return new


class DistillationSeq2SeqTrainer(DistillationTrainer, Seq2SeqTrainer):
    """[`DistillationTrainer`] for encoder-decoders, evaluating like [`~transformers.Seq2SeqTrainer`].

    Training distils the teacher's decoder logits under teacher forcing (both models read the `labels` shifted
    right). With `args.predict_with_generate`, `evaluate` and `predict` generate with the student (`max_length`,
    `num_beams` and other `generate` keywords as in `Seq2SeqTrainer`) and hand the generated ids to
    `compute_metrics`; the loss and the per-term metrics (`eval_loss_kd`, ...) are still computed under teacher
    forcing, as in training. `save_model` writes the student's `generation_config.json` beside it.

    Args:
        model (`PreTrainedModel`): the student, a `*ForConditionalGeneration` (or Marian `*MTModel`).
        teacher_model (`PreTrainedModel` or `str`, *optional*): the teacher, with the same head and vocabulary.
        args (`DistillationSeq2SeqArguments`): training, distillation and generation settings.
        **kwargs: every other `Seq2SeqTrainer` argument.

    >>> trainer = DistillationSeq2SeqTrainer(model=student, teacher_model=teacher, args=args)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationSeq2SeqArguments | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DistillationSeq2SeqArguments(output_dir="trainer_output")
        if not isinstance(args, DistillationSeq2SeqArguments):
            raise TypeError(
                f"`args` must be a DistillationSeq2SeqArguments, got {type(args).__name__}. Replace "
                "Seq2SeqTrainingArguments(...) or DistillationArguments(...) with DistillationSeq2SeqArguments(...), "
                "which accepts the fields of both."
            )
        if model is not None and tasks.detect_task(model) is not tasks.SEQ2SEQ:
            raise ValueError(
                f"DistillationSeq2SeqTrainer distils encoder-decoders (*ForConditionalGeneration), but the student is "
                f"a {type(model).__name__} ({tasks.detect_task(model).name}). Use DistillationTrainer for it."
            )
        super().__init__(model=model, teacher_model=teacher_model, args=args, **kwargs)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`Seq2SeqTrainer.prediction_step`, with the loss from `compute_loss` (the task CE, plus the per-term
        metrics) instead of the model's own loss."""
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        source = {k: v for k, v in inputs.items() if k not in _DECODER_KEYS}  # generation starts from scratch
        _, generated, _ = super().prediction_step(model, source, False, ignore_keys=ignore_keys, **gen_kwargs)
        labels, loss = inputs.get("labels"), None
        if labels is not None:
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs).detach()
        if self.args.prediction_loss_only:
            return loss, None, None
        return loss, generated, labels
