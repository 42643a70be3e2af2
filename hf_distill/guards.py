"""Stop (or skip) an optimizer step whose distillation loss is not finite, before it touches the weights.

`Trainer` alone lets a NaN loss through: with `logging_nan_inf_filter` (the default) it even hides it from the logs,
while the NaN gradients still reach the optimizer and the next checkpoint saves the ruined weights.

[`NonFiniteLossGuard`] is a callback the trainer installs. `compute_loss` hands it the summed per-example value of
each weighted term (`loss_ce`, `loss_kd`, `loss_attn`); just before `optimizer.step()` it reads them once, so the
check costs one host sync per optimizer step, not one per micro-batch (`Trainer` already syncs once per
micro-batch for its own NaN filter), and one all-reduce of three numbers under data parallelism so that every
process takes the same decision. A sum is finite only if every example's value is finite.

On a non-finite term it raises [`NonFiniteLossError`] naming the term and the step, before the update, so no
checkpoint is ever written from the bad state. With `skip_nonfinite_steps=True` it instead drops the step's
gradients (the optimizer then leaves every weight and its own state untouched; under fp16 the gradient scaler
skips the step as it does on overflow), logs a warning and counts the skipped steps as `skipped_nonfinite_steps`
in the training logs. A skipped step still counts towards `max_steps`, and advances the learning-rate schedule
except under fp16, where `Trainer` holds the schedule back on any step the scaler skipped.

Only the loss is watched: gradient overflow under fp16 with a finite loss is the scaler's ordinary business.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

if TYPE_CHECKING:
    from .trainer import DistillationTrainer

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_nonfinite_steps"


class NonFiniteLossError(FloatingPointError):
    """A distillation loss term became NaN or infinite; training stopped before the optimizer step."""


class NonFiniteLossGuard(TrainerCallback):
    """Checks the weighted loss terms of each optimizer step for NaN/inf (see the module docstring).

    Args:
        trainer (`DistillationTrainer`): the trainer whose steps are guarded.
    """

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer
        self.skipped = 0
        self._counted = False
        self._step_sums: dict[str, torch.Tensor] = {}
        self._window: dict[str, list[torch.Tensor]] = {}

    def observe(self, terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called by `compute_loss` in training with `{term: (per-example values, counts)}`; no host sync."""
        args = self.trainer.args
        weights = args.term_weights()
        for name, (total, _) in terms.items():
            if weights.get(name, 0) > 0:
                total = total.detach().float().sum()
                self._step_sums[name] = self._step_sums[name] + total if name in self._step_sums else total

    def log_items(self) -> dict[str, int]:
        return {SKIPPED_KEY: self.skipped} if self.skipped else {}

    # ---- callback events ---------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        self._counted = False
        self._step_sums.clear()

    def on_step_begin(self, args, state, control, **kwargs: Any) -> None:
        if not self._counted:  # on resume, `state.log_history` now comes from the checkpoint: continue its count
            self.skipped = max((entry.get(SKIPPED_KEY, 0) for entry in state.log_history), default=0)
            self._counted = True
        self._step_sums.clear()
        # The per-term logging window, as it was before this step, to restore if the step is skipped.
        sums = self.trainer._term_sums["train"]
        self._window = {name: [t.clone() for t in pair] for name, pair in sums.items()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs: Any) -> None:
        if not self._step_sums:
            return
        names = list(self._step_sums)
        values = torch.stack([self._step_sums[n] for n in names])
        self._step_sums.clear()
        if args.world_size > 1:
            values = self.trainer.accelerator.reduce(values, reduction="sum")
        bad = {n: v for n, v in zip(names, values.tolist()) if not math.isfinite(v)}  # the one sync per step
        if not bad:
            return
        step = state.global_step + 1
        what = ", ".join(f"{n}={v}" for n, v in bad.items())
        if not args.skip_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (epoch {state.epoch or 0:.2f}): {what}. Training stopped before "
                "this step's update, so the weights and every checkpoint are from step "
                f"{state.global_step} or earlier. Lower learning_rate, set max_grad_norm, use bf16 instead of fp16, "
                "check the inputs of this step, or set skip_nonfinite_steps=True to skip such steps."
            )
        self._drop_gradients()
        self.trainer._term_sums["train"].clear()
        self.trainer._term_sums["train"].update(self._window)
        self.skipped += 1
        logger.warning(
            "Skipping optimizer step %d: non-finite loss (%s); %d step(s) skipped so far.", step, what, self.skipped
        )

    def _drop_gradients(self) -> None:
        scaler = getattr(self.trainer.accelerator, "scaler", None)
        for group in self.trainer.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if scaler is not None:  # the GradScaler skips a step whose gradients are not finite
                    param.grad.fill_(float("nan"))
                else:  # torch optimizers leave parameters without a gradient untouched (no decay, no momentum)
                    param.grad = None
