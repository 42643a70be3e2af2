"""`DistillationTrainer`: a drop-in `Trainer` that distils a frozen teacher into the model being trained."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from . import checks, engines, tasks, teacher_cache, terms
from .args import DistillationArguments
from .artifacts import CONFIG_NAME, HISTORY_NAME, DistillationRecord, library_versions, write_artifacts
from .attention import AttentionRecorder, ProjectionRecorder
from .card import CARD_NAME, teacher_lineage, trainer_model_card, write_model_card
from .errors import DistillationSettingError
from .guards import NonFiniteLossGuard
from .lm_head import ProjectionCapture, fused_projection_problem
from .modeling import check_teacher_layers, count_layers, count_parameters, default_layer_map, num_layers
from .projection import HiddenProjection, ZeroGradAfterStep, add_to_optimizer, average_gradients
from .student import build_student
from .term_meter import TermMeter

__all__ = ["DistillationTrainer", "load_teacher"]

logger = logging.getLogger(__name__)


def load_teacher(
    name_or_path: str, like: nn.Module, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedModel:
    """Load a teacher for the same task as the student `like`, preferring safetensors, remote code off."""
    import transformers

    auto_name = tasks.detect_task(like).auto_class
    # use_safetensors=None: safetensors when present, else a .bin read with weights_only=True (no pickled code).
    kwargs = {"revision": revision} if revision is not None else {}
    return getattr(transformers, auto_name).from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, use_safetensors=None, weights_only=True, **kwargs
    )


class DistillationTrainer(Trainer):
    """[`~transformers.Trainer`] that trains `model` (the student) to match a frozen `teacher_model`.

    The loss, its terms and their weights are described in [`DistillationArguments`] and `hf_distill.losses`.
    Everything else (callbacks, mixed precision, gradient accumulation, checkpoints, `evaluate`, `predict`,
    `push_to_hub`) works as with `Trainer`.

    Args:
        model (`PreTrainedModel`): the student; or, with `args.student_num_layers`, the model the student is built
            from (`build_student`, before `Trainer.__init__` sees it), which is then also the teacher unless
            `teacher_model` or `args.teacher_model_name_or_path` names another.
        teacher_model (`PreTrainedModel` or `str`, *optional*): the teacher, or a path / Hub id loaded with the
            student's task head. Defaults to `args.teacher_model_name_or_path` (loaded the same way). It is moved to
            the student's device, put in `eval()`, frozen and never wrapped for data parallelism.
        args (`DistillationArguments`): training and distillation settings.
        **kwargs: every other `Trainer` argument (`train_dataset`, `eval_dataset`, `processing_class`, ...).

    >>> trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    # compute_loss normalises by the number of examples in the whole accumulated (and distributed) batch.
    loss_is_scaled_for_ga = True
    # How the training set was augmented (`hf_distill.augment`), if it was: recorded in distillation_config.json.
    augmentation: dict[str, Any] | None = None

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationArguments | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("`model` (the student) is required; `model_init` is not supported for distillation.")
        if args is None:
            args = DistillationArguments(output_dir="trainer_output")
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                f"`args` must be a DistillationArguments, got {type(args).__name__}. Replace TrainingArguments(...) "
                "with DistillationArguments(...); it accepts the same fields plus temperature, alpha, beta, gamma."
            )
        # The student is built (and the teacher loaded) before Trainer.__init__, which moves, wraps and hands the
        # model to the accelerator and the optimizer: they only ever see the student.
        if args.student_num_layers is not None and (kwargs.get("optimizers") or (None, None))[0] is not None:
            raise ValueError(
                f"student_num_layers={args.student_num_layers} builds a new student from `model`, but `optimizers` "
                "passes an optimizer made for `model`'s parameters, which would then train the teacher. Leave "
                "`optimizers` unset (choose it with `optim` / `optim_args`), or build the student yourself."
            )
        model, teacher_model, self.teacher_name_or_path = _student_and_teacher(model, teacher_model, args)
        # The active loss terms (hf_distill/terms.py) and what they need from the models, read once.
        self._terms, self._needs = terms.active_terms(args.setting), terms.needs_of(args.setting)
        self.task = _check_tasks(model, teacher_model)
        self.task.check_arguments(args)  # settings the task cannot honour (e.g. a temperature for regression)
        self.task.check_terms(model, teacher_model, args)  # e.g. no attention term for a convolutional network
        checks.check_models(model, teacher_model, kwargs.get("processing_class"))  # labels, vocabulary, tokenizer
        self.layer_map = _check_pair(model, teacher_model, args, self._needs)
        widths = _projection_widths(model, teacher_model, args, self._needs)  # (student, teacher) when W_h is needed
        if widths is not None and (kwargs.get("optimizers") or (None, None))[0] is not None:
            raise ValueError(
                f"hidden_weight={args.hidden_weight} with hidden sizes {widths[0]} (student) and {widths[1]} "
                "(teacher) trains a learned projection (TinyBERT's W_h) with the student, but `optimizers` passes a "
                "ready-made optimizer that cannot hold it. Leave `optimizers` unset and choose the optimizer with "
                "`optim` / `optim_args` or `optimizer_cls_and_kwargs`; the projection gets its own param group."
            )
        if args.teacher_cache_dir is not None:
            if self.task.teacher_cache is None:
                cached = "; ".join(f"{t.teacher_cache.description} for {t.name}" for t in tasks.TASKS.values()
                                   if t.teacher_cache is not None)  # fmt: skip
                raise DistillationSettingError(
                    f"teacher_cache_dir={args.teacher_cache_dir!r} caches {cached}; this is a {self.task.name} "
                    f"model: {self.task.no_cache_reason}. Leave teacher_cache_dir unset.",
                    "teacher_cache_dir",
                )
            teacher_cache.check_cacheable(kwargs.get("train_dataset"))

        super().__init__(model=model, args=args, **kwargs)

        self.hidden_projection = self._build_projection(model, widths) if widths is not None else None
        if self.hidden_projection is not None:
            self.add_callback(ZeroGradAfterStep(self.hidden_projection))
        self._teacher_num_parameters = count_parameters(teacher_model)  # before any engine shards it
        self.teacher_model = self._prepare_teacher(teacher_model)
        teacher_parameters = set(inspect.signature(self.teacher_model.forward).parameters)
        self._teacher_input_names = teacher_parameters - set(self.task.label_names)  # the teacher computes no loss
        self._student_recorder = self._teacher_recorder = None
        if self._needs & {"attention_maps", "attention_scores"}:
            scores = "attention_scores" in self._needs  # TinyBERT compares scores, not probabilities
            self._student_recorder = AttentionRecorder(model, list(range(len(self.layer_map))), scores=scores)
            self._teacher_recorder = AttentionRecorder(self.teacher_model, self.layer_map, scores=scores)
            _check_heads(args, self._student_recorder, self._teacher_recorder)
        self._student_projections = self._teacher_projections = None
        if "relations" in self._needs:  # MiniLM / MiniLMv2: the last student layer and its mapped teacher layer
            self._student_projections = ProjectionRecorder(model, len(self.layer_map) - 1)
            self._teacher_projections = ProjectionRecorder(self.teacher_model, self.layer_map[-1])
            self._relation_heads = _relation_heads(args, self._student_projections, self._teacher_projections)
        self._student_capture = self._teacher_capture = None
        if self._fuses_lm_head(model, self.teacher_model):  # see hf_distill/lm_head.py
            self._student_capture, self._teacher_capture = ProjectionCapture(model), ProjectionCapture(teacher_model)
        self._term_meter = TermMeter(args.term_weights())  # per-term sums for the logs and the non-finite guard
        self._teacher_lineage = teacher_lineage(self.teacher_name_or_path)
        self._card_kwargs: dict[str, Any] = {}  # what the last create_model_card call was given, kept for later saves
        self._prior_training_seconds = 0.0
        self._train_started: float | None = None
        self._train_finished: float | None = None
        self._loss_guard = NonFiniteLossGuard(self._term_meter, self.accelerator, lambda: self.optimizer)
        self.add_callback(self._loss_guard)

    # ---- teacher ---------------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Freeze the teacher and hand it to the run's engine, never DDP (see `engines.py`); return the model."""
        self._teacher_runner = engines.prepare_teacher(teacher, self.accelerator, self.args, self.is_model_parallel)
        precision = engines.mixed_precision_of(self.args)
        self._teacher_dtype = engines.resolve_teacher_dtype(self.args.teacher_dtype, precision)  # for float inputs
        return teacher

    def _fuses_lm_head(self, student: nn.Module, teacher: nn.Module) -> bool:
        """Whether training computes the output projections inside the loss (`fuse_lm_head`, default: where it can)."""
        requested = self.args.fuse_lm_head
        if requested is False:
            return False
        problem = None
        if not self.task.fuses_lm_head:
            fused = ", ".join(t.name for t in tasks.TASKS.values() if t.fuses_lm_head)
            problem = f"this is a {self.task.name} model; the fused loss is for {fused} models"
        elif self.is_deepspeed_enabled or self.is_fsdp_enabled:
            problem = "DeepSpeed and FSDP shard the heads' weights, which the fused loss reads outside the forward"
        else:
            for who, model in (("student", student), ("teacher", teacher)):
                reason = fused_projection_problem(model)
                problem = problem or (f"the {who}'s {reason}" if reason else None)
        if problem and requested:
            message = f"fuse_lm_head=True cannot be honoured: {problem}. Set fuse_lm_head=False (or leave it unset to "
            raise DistillationSettingError(message + "fuse only where possible).", "fuse_lm_head")
        return problem is None

    @torch.no_grad()
    def _teacher_forward(
        self, inputs: dict[str, Any], fused: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor] | None, tuple | None]:
        """The teacher's logits (`Task.logits`), attention maps of the mapped layers (gamma > 0), hidden states.

        With `relation_weight > 0` its projections are left in `self._teacher_projections`."""
        hidden = "hidden_states" in self._needs
        if self.teacher_model.training:  # someone called .train() on it: dropout must stay off
            self.teacher_model.eval()
        teacher_inputs = {k: v for k, v in inputs.items() if k in self._teacher_input_names}
        teacher_inputs = engines.cast_floating_inputs(teacher_inputs, self._teacher_dtype)
        if hidden:
            teacher_inputs["output_hidden_states"] = True
        recording = self._teacher_recorder.recording() if self._teacher_recorder else contextlib.nullcontext()
        projecting = self._teacher_projections.recording() if self._teacher_projections else contextlib.nullcontext()
        # The student's forward runs under the run's mixed precision (accelerate wraps it); the teacher, which we keep
        # out of `accelerator.prepare`, gets the same autocast here instead of running in full float32.
        capturing = self._teacher_capture.capturing() if fused else contextlib.nullcontext()
        with recording, projecting, capturing, self.accelerator.autocast():
            outputs = self._teacher_runner(**teacher_inputs)
        maps = self._teacher_recorder.attention_maps() if self._teacher_recorder else None
        logits = (self._teacher_capture.logits(),) if fused else self.task.logits(outputs)
        return logits, maps, _layer_states(outputs) if hidden else None

    # ---- teacher-output cache (opt-in, gamma = 0): see hf_distill/teacher_cache.py --------------------------

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.args.teacher_cache_dir is not None:
            for column in (teacher_cache.TEACHER_LOGITS, *teacher_cache.TOP_K_COLUMNS):
                if column not in self._signature_columns:
                    self._signature_columns.append(column)  # survives remove_unused_columns

    def get_train_dataloader(self):
        if self.args.teacher_cache_dir is None or self.args.beta == 0 or self.train_dataset is None:
            return super().get_train_dataloader()
        dataset, collator = self.train_dataset, self.data_collator
        self.train_dataset = teacher_cache.with_teacher_logits(dataset, self._cached_teacher_logits(dataset))
        self.data_collator = self.task.teacher_cache.collator(collator)  # adds the cached columns to each batch
        try:
            return super().get_train_dataloader()
        finally:  # the user's dataset and collator stay as they gave them
            self.train_dataset, self.data_collator = dataset, collator

    def _cached_teacher_logits(self, dataset):
        """The teacher's logits on `dataset`, row for row, from the cache or computed once and stored there."""
        seen = self._remove_unused_columns(dataset, description="teacher cache")  # exactly what the collator gets
        precision = engines.mixed_precision_of(self.args)
        precision = "fp32" if precision == "no" else precision  # how cache keys have always spelled it
        precision += f"/teacher:{self._teacher_dtype}"  # a teacher cast to another dtype gives other logits
        cache = self.task.teacher_cache  # what is stored: class logits per example, a top-k summary per token
        key, parts = teacher_cache.teacher_cache_key(
            self.teacher_model, seen, self.processing_class, self.data_collator, precision, cache.key_extra(self.args)
        )

        def forward(batch: dict[str, Any]) -> torch.Tensor:
            with self.compute_loss_context_manager():
                return self._teacher_forward(self._prepare_inputs(batch))[0][0]  # (B, C) or (B, T, V) logits

        def compute() -> torch.Tensor | dict[str, list]:
            batch_size = self.args.per_device_eval_batch_size * max(1, self.args.n_gpu)
            return cache.compute(seen, self.data_collator, forward, batch_size, self.args)

        with self.args.main_process_first(desc="teacher logits cache"):
            return teacher_cache.load_or_compute_teacher_logits(
                self.args.teacher_cache_dir, key, parts, compute, cache.columns
            )

    # ---- learned hidden-state projection (unequal widths): see hf_distill/projection.py ------------------------

    def _build_projection(self, student: nn.Module, widths: tuple[int, int]) -> HiddenProjection:
        """TinyBERT's `W_e` and `W_h`, on the student's device and dtype; refuses engines and optimizers that cannot
        train a parameter outside the student."""
        args, what = self.args, f"hidden sizes {widths[0]} (student) and {widths[1]} (teacher)"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            engine = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP"
            raise DistillationSettingError(
                f"hidden_weight={args.hidden_weight} with {what} trains a learned projection outside the student, "
                f"which {engine} would neither shard nor step. Train with DDP (plain torchrun) instead, or use a "
                "student of the teacher's width (build_student keeps it), or set hidden_weight=0.",
                "hidden_weight",
            )
        optim = getattr(args.optim, "value", args.optim)
        if "layerwise" in optim or optim in ("lomo", "adalomo"):
            raise DistillationSettingError(
                f"optim={optim!r} updates parameters inside the backward pass of the student only, so the learned "
                f"hidden-state projection ({what}) would never train. Choose another optim, e.g. 'adamw_torch'.",
                "optim",
            )
        reference = next(student.parameters())
        init_std = getattr(getattr(student, "config", None), "initializer_range", 0.02)
        projection = HiddenProjection(*widths, init_std=init_std, seed=args.seed)  # same on every process
        return projection.to(device=reference.device, dtype=reference.dtype)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.hidden_projection is not None:  # its own param groups, with the student's lr and decay rules
            decay_names = self.get_decay_parameter_names(self.hidden_projection)
            add_to_optimizer(optimizer, self.hidden_projection, decay_names, self.args.weight_decay)
        return optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.hidden_projection is not None and self.args.world_size > 1 and self.accelerator.sync_gradients:
            average_gradients(self.hidden_projection)  # DDP averages only the student it wraps
        return loss

    def _trained_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [*model.parameters(), *self.hidden_projection.parameters()]

    def _clip_grad_norm(self, model: nn.Module):
        if self.hidden_projection is None:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(self._trained_parameters(model), self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        if grad_norm is None and self.hidden_projection is not None:  # the logged norm covers the projection too
            grad_norm = self.accelerator.clip_grad_norm_(self._trained_parameters(model), float("inf"))
        return super()._get_grad_norm(model, grad_norm)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.hidden_projection is not None and self.args.should_save:  # checkpoints only, before trainer_state
            self.hidden_projection.save(output_dir)

    # ---- loss ------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The weighted sum of the terms (see `DistillationArguments`), each normalised over its own units.

        The task terms (`loss_ce`, `loss_kd`) are summed over their units (examples; tokens for token
        classification and language models, see `hf_distill.tasks`) and the attention, hidden-state and relation
        terms over examples. In training, `num_items_in_batch` holds both counts for the whole accumulated,
        all-process batch (see `get_batch_samples`), so accumulation and data parallelism are exact.
        In evaluation the returned loss is the task cross-entropy, comparable with plain fine-tuning; the
        distillation terms are reported under their own names (`eval_loss_kd`, `eval_loss_attn`, ...).
        """
        args, task = self.args, self.task
        inputs = task.model_inputs(self.accelerator.unwrap_model(model), inputs)  # seq2seq: the decoder inputs
        mode = "train" if model.training else "eval"
        cached_logits = inputs.get(teacher_cache.TEACHER_LOGITS)  # (B, C) from the teacher-output cache
        if cached_logits is None:
            cached_logits = teacher_cache.top_k_teacher_of(inputs)  # causal LM: TopKTeacher, (B, T, k)
        dropped = (*task.label_names, teacher_cache.TEACHER_LOGITS, *teacher_cache.TOP_K_COLUMNS)  # student: no loss
        student_inputs = {k: v for k, v in inputs.items() if k not in dropped}
        if args.alpha > 0 and mode == "train" and not task.has_labels(inputs):
            raise ValueError(
                f"alpha={args.alpha} weights the hard-label loss, but the batch has no "
                f"{' / '.join(task.label_names)}. Add the target column(s) to the dataset ('label' is renamed "
                "'labels'; extractive QA needs start_positions and end_positions), or set alpha=0 to distil from the "
                "teacher alone."
            )

        recording = self._student_recorder.recording() if self._student_recorder else contextlib.nullcontext()
        projecting = self._student_projections.recording() if self._student_projections else contextlib.nullcontext()
        needs, hidden = self._needs, "hidden_states" in self._needs
        if hidden:
            student_inputs["output_hidden_states"] = True
        outputs_in_loss = any(term.per_unit for term in self._terms)  # loss_ce or loss_kd: the logits count
        # fused: the heads' projections run inside the loss, a chunk of tokens at a time (hf_distill/lm_head.py)
        fused = self._student_capture is not None and mode == "train" and outputs_in_loss
        capturing = self._student_capture.capturing() if fused else contextlib.nullcontext()
        with recording, projecting, capturing:
            outputs = model(**student_inputs)
        student_maps = self._student_recorder.attention_maps() if self._student_recorder else None
        # what the layers see: speech frames; multiple choice's (B * C, T) sequences (folded back by per_example)
        layer_mask = task.layer_mask(self.accelerator.unwrap_model(model), inputs)
        needs_internals = not needs.isdisjoint(terms.TEACHER_INTERNALS)  # maps, states, projections: teacher runs
        if cached_logits is not None and not needs_internals:
            teacher_logits, teacher_maps, teacher_hidden = (cached_logits,), None, None  # (B, C) or a TopKTeacher
        elif "teacher_logits" in needs or needs_internals:
            teacher_logits, teacher_maps, teacher_hidden = self._teacher_forward(inputs, fused=fused)
        else:
            teacher_logits, teacher_maps, teacher_hidden = None, None, None

        student_logits = (self._student_capture.logits(),) if fused else task.logits(outputs)
        weights = args.term_weights()
        values, output_sum = task.output_terms(
            student_logits[0] if fused else student_logits, teacher_logits, inputs, args.temperature, weights,
            training=mode == "train",
        )  # fmt: skip
        # name -> (per-example values, counts), each (B,); output terms are sums over each example's units
        batch = tasks.batch_size(inputs)
        ones = torch.ones(batch, device=output_sum.device)
        context = terms.TermContext(
            settings=args.setting, mask=layer_mask, layer_map=self.layer_map, hidden_projection=self.hidden_projection,
            relation_heads=getattr(self, "_relation_heads", None),
            student=self._view(self._student_projections, outputs, student_logits, student_maps,
                               _layer_states(outputs) if hidden else None),
            teacher=self._view(self._teacher_projections, None, teacher_logits, teacher_maps, teacher_hidden),
        )  # fmt: skip
        for term in self._terms:  # the per-example terms, each from its own function (hf_distill/terms.py)
            if not term.per_unit:
                values[term.name] = (task.per_example(term.compute(context), inputs), ones)
        example_sum = sum((weights[n] * v.sum() for n, (v, _) in values.items() if not terms.get_term(n).per_unit),
                          torch.zeros((), device=ones.device))  # fmt: skip
        if mode == "train" and not outputs_in_loss:
            # The logits are not in the loss, so the head would get no gradient and DDP would wait for it forever
            # (PITFALLS #7). A zero-valued dependency gives every student parameter a (zero) gradient.
            example_sum = example_sum + sum(0.0 * logits.float().sum() for logits in student_logits)
        self._accumulate(mode, values)  # for the logs, and the NaN/inf check once per optimizer step (guards.py)

        if mode == "eval" and "loss_ce" in values:
            ce, counts = values["loss_ce"]
            loss = ce.sum() / counts.sum().clamp_min(1)  # task loss, comparable with fine-tuning
        else:
            if mode == "train" and torch.is_tensor(num_items_in_batch) and num_items_in_batch.numel() == 2:
                examples, units = num_items_in_batch.unbind()
            else:  # outside a training step (or a caller's own count): this batch alone
                examples, units = batch, task.units_per_example(inputs).sum().to(ones.device)
            loss = output_sum / units.clamp_min(1) + example_sum / examples
            if mode == "train" and num_items_in_batch is not None:
                if args.average_tokens_across_devices and args.world_size > 1:
                    loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if return_outputs and hidden:  # keep the hidden states out of the gathered predictions
            outputs = type(outputs)(**{k: v for k, v in outputs.items() if not k.endswith("hidden_states")})
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _view(projections: ProjectionRecorder | None, outputs, logits, maps, hidden_states) -> terms.ModelView:
        """What one model gave for the batch, for the terms; its recorded projections are read here."""
        view = terms.ModelView(outputs, logits, maps, hidden_states)
        if projections is not None:
            view.projections, view.causal = projections.projections(), projections.causal
        return view

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Fetch the batches of one optimizer step and count, across all processes, their examples and their loss
        units (the same for sequence-level tasks; the distilled tokens for token-level ones): a `(2,)` tensor."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        examples = torch.tensor(sum(tasks.batch_size(b) for b in batch_samples), device=device)
        units = sum(self.task.units_per_example(b).sum().to(device) for b in batch_samples)  # no host sync
        count = torch.stack([examples, torch.as_tensor(units, device=device)])
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count[None]).sum(dim=0)
        return batch_samples, count

    # ---- per-term metrics ------------------------------------------------------------------------------------

    def _accumulate(self, mode: str, values: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add per-example term values and counts (each `(B,)`) to the term meter's sums of `mode`."""
        batch = next(iter(values.values()))[0].shape[0] if values else 0
        keep = engines.real_examples(self.accelerator, batch) if mode == "eval" else None  # no padding repeats
        self._term_meter.add(mode, values, keep)

    def _pop_term_means(self, mode: str) -> dict[str, float]:
        """Average each term over its units since the last call, across all processes (terms with no unit left out)."""
        reduce = (lambda pair: self.accelerator.reduce(pair, reduction="sum")) if self.args.world_size > 1 else None
        return self._term_meter.pop_means(mode, self.args.device, reduce)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the terms averaged over the logging window
            logs.update(self._pop_term_means("train"))
            logs.update(self._loss_guard.log_items())
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):  # fmt: skip
        self._term_meter.clear("eval")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        means = self._pop_term_means("eval")
        for name, value in means.items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        if "loss_ce" in means and f"{metric_key_prefix}_loss" in output.metrics:
            # the same task CE, but exact across processes: Trainer's eval loss averages batch means, and on several
            # processes the last batch's mean includes accelerate's repeated padding examples.
            output.metrics[f"{metric_key_prefix}_loss"] = means["loss_ce"]
        if means:
            weights = self.args.term_weights()
            output.metrics[f"{metric_key_prefix}_distillation_loss"] = sum(weights[k] * v for k, v in means.items())
        return output

    # ---- artifacts -------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        keep = None
        if self.args.remove_unused_columns:  # the columns the collator will see
            self._set_signature_columns_if_needed()
            keep = set(self._signature_columns or []) or None
        resume_from_checkpoint = checks.before_train(  # data, then the newest complete checkpoint and its settings
            self.accelerator.unwrap_model(self.model), self.teacher_model, self.args, self.task, self.train_dataset,
            self.eval_dataset, self.data_collator, keep, resume_from_checkpoint, record=self.distillation_record,
        )  # fmt: skip
        if resume_from_checkpoint is not None and self.hidden_projection is not None:
            self.hidden_projection.load(resume_from_checkpoint)  # the optimizer state follows in Trainer.train
        self._prior_training_seconds = _recorded_training_seconds(resume_from_checkpoint)
        self._train_started, self._train_finished = time.monotonic(), None
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._train_finished = time.monotonic()

    def distillation_record(self) -> DistillationRecord:
        """The run's lineage and settings, as written to `distillation_config.json`."""
        args, student = self.args, self.accelerator.unwrap_model(self.model)
        student_params = count_parameters(student)
        elapsed = 0.0
        if self._train_started is not None:
            elapsed = (self._train_finished or time.monotonic()) - self._train_started
        return DistillationRecord(
            teacher_model=self.teacher_name_or_path,
            teacher_architecture=type(self.teacher_model).__name__,
            student_architecture=type(student).__name__,
            task=self.task.name,
            teacher_num_parameters=self._teacher_num_parameters,
            student_num_parameters=student_params,
            teacher_num_layers=count_layers(self.teacher_model),
            student_num_layers=count_layers(student),
            compression_ratio=round(self._teacher_num_parameters / student_params, 4),
            student_layers_from_teacher=getattr(student.config, "distillation_teacher_layers", None),
            **args.distillation_settings() | {"layer_map": self.layer_map},
            hidden_projection=self.hidden_projection.describe() if self.hidden_projection is not None else None,
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            total_train_batch_size=args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * max(1, args.world_size),
            num_train_epochs=args.num_train_epochs if args.max_steps <= 0 else None,  # max_steps > 0 overrides it
            max_steps=args.max_steps,
            epochs_trained=round(self.state.epoch, 4) if self.state.epoch is not None else None,
            seed=args.seed,
            global_step=self.state.global_step,
            metric_for_best_model=args.metric_for_best_model,
            best_metric=self.state.best_metric,
            best_model_checkpoint=self.state.best_model_checkpoint,
            training_time_seconds=round(self._prior_training_seconds + elapsed, 3),
            augmentation=self.augmentation,
            teacher_lineage=self._teacher_lineage,
            versions=library_versions(),
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            output_dir, record = output_dir or self.args.output_dir, self.distillation_record()
            write_artifacts(output_dir, record, self.state.log_history)
            write_model_card(trainer_model_card(self, output_dir, record=record, **self._card_kwargs), output_dir)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the distillation model card to `output_dir/README.md` (see `hf_distill.card`); `push_to_hub` calls it.

        Takes `Trainer.create_model_card`'s arguments (`language`, `license`, `tags`, `model_name`, `finetuned_from`,
        `tasks`, `dataset_tags`, `dataset`, `dataset_args`); they are remembered for the cards of later saves.
        """
        self._card_kwargs.update({k: v for k, v in kwargs.items() if v is not None})
        if self.is_world_process_zero():
            write_model_card(trainer_model_card(self, self.args.output_dir, **self._card_kwargs), self.args.output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer copies only weights, config and tokenizer from the checkpoint into output_dir before uploading it.
        if self.is_world_process_zero():
            for name in (CONFIG_NAME, HISTORY_NAME, CARD_NAME):
                if os.path.isfile(os.path.join(checkpoint_folder, name)):
                    shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)


def _student_and_teacher(
    model: nn.Module, teacher_model: nn.Module | str | None, args: DistillationArguments
) -> tuple[nn.Module, nn.Module, str | None]:
    """`(student, teacher, teacher's name)` from the trainer's `model`, `teacher_model` and the arguments.

    The teacher is `teacher_model`, else `args.teacher_model_name_or_path`, else (when `args.student_num_layers`
    builds the student from `model`) `model` itself. A teacher given as a name is loaded with the student's task
    head. With `args.student_num_layers` the student is `build_student(model, ...)`; otherwise it is `model`.
    """
    named = args.teacher_model_name_or_path
    if isinstance(teacher_model, str) and named is not None and teacher_model != named:
        raise ValueError(
            f"teacher_model={teacher_model!r} and teacher_model_name_or_path={named!r} name two different "
            "teachers. Pass one of them."
        )
    builds_student = args.student_num_layers is not None
    teacher = teacher_model if teacher_model is not None else named
    if teacher is None and builds_student:
        teacher = model  # the model the script loaded is the teacher; the student is its shrunk copy
    if teacher is None:
        raise ValueError(
            "no teacher: pass `teacher_model` (a model or its path / Hub id), set teacher_model_name_or_path "
            "(--teacher_model_name_or_path), or set student_num_layers (--student_num_layers) to build the student "
            "from `model` and distil `model` into it."
        )
    name = teacher if isinstance(teacher, str) else _name_of(teacher)
    if isinstance(teacher, str):
        teacher = load_teacher(
            teacher, like=model, trust_remote_code=args.teacher_trust_remote_code, revision=args.teacher_revision
        )
    if builds_student:
        try:
            model = build_student(model, args.student_num_layers, args.student_layers)
        except ValueError as error:
            message = f"student_num_layers / student_layers: {error}"
            raise DistillationSettingError(message, ("student_num_layers", "student_layers")) from error
    elif teacher is model:
        raise ValueError(
            "`teacher_model` is the same object as `model`: pass a separate (frozen) teacher, or set "
            "student_num_layers to build a smaller student from it."
        )
    return model, teacher, name


def _layer_states(outputs) -> tuple[torch.Tensor, ...]:
    """The hidden states of the layers `find_layers` maps: the encoder's for encoder-decoders (BART, T5)."""
    states = outputs.get("hidden_states")
    return states if states is not None else outputs["encoder_hidden_states"]


def _name_of(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


def _check_tasks(student: nn.Module, teacher: nn.Module) -> tasks.Task:
    """The task both models are heads for; refuses a teacher with another head than the student's."""
    task, teacher_task = tasks.detect_task(student), tasks.detect_task(teacher)
    if teacher_task is not task and teacher_task.auto_class == task.auto_class:  # one head, set up differently
        s_config, t_config = student.config, teacher.config
        raise ValueError(
            f"the student is set up for {task.name} (problem_type={s_config.problem_type!r}, num_labels="
            f"{s_config.num_labels}) but the teacher for {teacher_task.name} (problem_type={t_config.problem_type!r}, "
            f"num_labels={t_config.num_labels}): both need the same problem_type and num_labels. Build the student "
            "from the teacher (build_student) or give it the teacher's problem_type, num_labels and id2label."
        )
    if teacher_task is not task:
        raise ValueError(
            f"the student is a {type(student).__name__} ({task.name}) but the teacher a {type(teacher).__name__} "
            f"({teacher_task.name}): both need the same task head. Load the teacher with {task.auto_class}."
        )
    task.check_models(student, teacher)  # what the task's loss needs of both heads (e.g. single-label classes)
    return task


def _check_pair(
    student: nn.Module, teacher: nn.Module, args: DistillationArguments, needs: frozenset[str]
) -> list[int] | None:
    """Resolve and check the layer map before any work is done; return it (None when no term
    compares layers: logit distillation needs no layer list, so it works on any model with a supported head).

    (Labels, vocabulary and tokenizer are `checks.check_models`'; the hidden widths `_projection_widths`'.)"""
    uses_layers = "layer_map" in needs
    _check_layerdrop(getattr(student, "config", None), args, uses_layers or args.hidden_weight > 0)
    try:
        student_layers, teacher_layers = num_layers(student), num_layers(teacher)
    except ValueError:
        if uses_layers or args.layer_map is not None:
            raise
        return None
    layer_map = args.layer_map if args.layer_map is not None else default_layer_map(student_layers, teacher_layers)
    check_teacher_layers("layer_map", layer_map, student_layers, teacher_layers)
    return list(layer_map)


def _check_layerdrop(config: Any, args: DistillationArguments, compares_layers: bool) -> None:
    """LayerDrop (wav2vec2 and HuBERT default to 0.1) skips random student layers in training: their attention is
    never recorded and their hidden state is the previous layer's, so the layer terms would crash or compare less."""
    drops = {k: v for k, v in (config.to_dict() if config is not None else {}).items() if k.endswith("layerdrop")}
    dropping = {k: v for k, v in drops.items() if isinstance(v, (int, float)) and v > 0}
    if compares_layers and dropping:
        name, value = next(iter(dropping.items()))
        raise ValueError(
            f"the student's config.{name}={value} skips random layers in training, so the layer-wise terms (gamma="
            f"{args.gamma}, hidden_weight={args.hidden_weight}, relation_weight={args.relation_weight}) would miss "
            f"them. Set student.config.{name} = 0 (on the command line: save the teacher with {name}: 0 in its "
            "config.json; it changes nothing at inference), or set those weights to 0."
        )


def _projection_widths(
    student: nn.Module, teacher: nn.Module, args: DistillationArguments, needs: frozenset[str]
) -> tuple[int, int] | None:
    """`(student, teacher)` hidden sizes when the MSE hidden-state term needs a learned projection, else None.

    The one check of the two models' hidden widths: the cosine term needs equal widths, the MSE term known ones."""
    s_width = getattr(getattr(student, "config", None), "hidden_size", None)
    t_width = getattr(getattr(teacher, "config", None), "hidden_size", None)
    if args.hidden_weight == 0 or s_width == t_width:
        return None
    if args.hidden_loss == "cosine":
        raise DistillationSettingError(
            f"hidden_loss='cosine' (DistilBERT) compares hidden states directly, but the student's hidden_size is "
            f"{s_width} and the teacher's {t_width}. Use hidden_loss='mse', which learns a projection (TinyBERT's "
            "W_h) for unequal widths, or a student of the teacher's width (build_student keeps it), or set "
            f"hidden_weight=0 (now {args.hidden_weight}).",
            ("hidden_loss", "hidden_weight"),
        )
    if "projection" not in needs:
        return None
    if s_width is None or t_width is None:
        raise DistillationSettingError(
            f"hidden_weight={args.hidden_weight} needs both models' config.hidden_size to size the hidden-state "
            f"projection, but the student's is {s_width} and the teacher's {t_width}. Set hidden_weight=0.",
            "hidden_weight",
        )
    return s_width, t_width


def _check_heads(args: DistillationArguments, student: AttentionRecorder, teacher: AttentionRecorder) -> None:
    if args.attention_loss == "mse":  # head-averaged: any head counts
        return
    for s_layer, (s_heads, t_heads) in enumerate(zip(student.num_heads, teacher.num_heads)):
        if s_heads != t_heads:
            raise DistillationSettingError(
                f"attention_loss={args.attention_loss!r} compares heads one to one, but student layer {s_layer} has "
                f"{s_heads} heads and teacher layer {teacher.layer_indices[s_layer]} has {t_heads}. Use "
                "attention_loss='mse'.",
                "attention_loss",
            )


def _relation_heads(args: DistillationArguments, student: ProjectionRecorder, teacher: ProjectionRecorder) -> int:
    """The relation heads of the self-relation term, checked against both models before any work is done."""
    s_geometry, t_geometry = student.geometry, teacher.geometry
    if args.relation_loss == "value":  # MiniLM compares each value head's relation one to one
        if s_geometry.num_key_value_heads != t_geometry.num_key_value_heads:
            raise DistillationSettingError(
                f"relation_loss='value' compares attention heads one to one, but the student's last layer has "
                f"{s_geometry.num_key_value_heads} value heads and teacher layer {teacher.layer_index} has "
                f"{t_geometry.num_key_value_heads}. Use relation_loss='qkv', which works with any head counts.",
                "relation_loss",
            )
        return t_geometry.num_key_value_heads
    heads = args.relation_heads or t_geometry.num_heads
    for who, geometry in (("student", s_geometry), ("teacher", t_geometry)):
        widths = set(geometry.widths.values())
        if any(width % heads for width in widths):
            raise DistillationSettingError(
                f"relation_heads={heads} must divide the {who}'s query/key/value widths {sorted(widths)}. Choose "
                f"relation_heads that divides both models' widths, e.g. "
                f"{math.gcd(*s_geometry.widths.values(), *t_geometry.widths.values())}.",
                "relation_heads",
            )
    return heads


def _recorded_training_seconds(checkpoint: str | None) -> float:
    """Training time already spent before the (resolved) checkpoint we resume from (0 for a fresh run)."""
    if checkpoint is None:
        return 0.0
    file = Path(checkpoint) / CONFIG_NAME
    try:
        return float(json.loads(file.read_text(encoding="utf-8")).get("training_time_seconds") or 0.0)
    except (OSError, ValueError):
        return 0.0
