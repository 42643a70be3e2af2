"""Stop (or skip) an optimizer step whose distillation loss is not finite, before it touches the weights.

`Trainer` alone lets a NaN loss through: with `logging_nan_inf_filter` (the default) it even hides it from the logs,
while the NaN gradients still reach the optimizer and the next checkpoint saves the ruined weights.

[`NonFiniteLossGuard`] is a callback the trainer installs. It reads the term meter (`hf_distill.term_meter`), to
which `compute_loss` hands the summed per-example value of each weighted term (`loss_ce`, `loss_kd`, `loss_attn`,
...); just before `optimizer.step()` it reads them once, so the
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
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from .term_meter import TermMeter

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_nonfinite_steps"


class NonFiniteLossError(FloatingPointError):
    """A distillation loss term became NaN or infinite; training stopped before the optimizer step."""


class NonFiniteLossGuard(TrainerCallback):
    """Checks the weighted loss terms of each optimizer step for NaN/inf (see the module docstring).

    Args:
        meter (`TermMeter`): the meter `compute_loss` fills; the guard reads each step's weighted term sums from it.
        accelerator (`accelerate.Accelerator`): sums the check across processes; its gradient scaler, if any.
        optimizer (`Callable[[], torch.optim.Optimizer]`): returns the optimizer (made only when training starts).
    """

    def __init__(self, meter: TermMeter, accelerator: Any, optimizer: Callable[[], torch.optim.Optimizer]) -> None:
        self.meter = meter
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.skipped = 0
        self._counted = False

    def log_items(self) -> dict[str, int]:
        return {SKIPPED_KEY: self.skipped} if self.skipped else {}

    # ---- callback events ---------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        self._counted = False
        self.meter.begin_step()

    def on_step_begin(self, args, state, control, **kwargs: Any) -> None:
        if not self._counted:  # on resume, `state.log_history` now comes from the checkpoint: continue its count
            self.skipped = max((entry.get(SKIPPED_KEY, 0) for entry in state.log_history), default=0)
            self._counted = True
        self.meter.begin_step()  # also keeps the logging window as it is, to restore if the step is skipped

    def on_pre_optimizer_step(self, args, state, control, **kwargs: Any) -> None:
        sums = self.meter.take_step_sums()
        if not sums:
            return
        names = list(sums)
        values = torch.stack([sums[n] for n in names])
        if args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
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
        self.meter.forget_step()
        self.skipped += 1
        logger.warning(
            "Skipping optimizer step %d: non-finite loss (%s); %d step(s) skipped so far.", step, what, self.skipped
        )

    def _drop_gradients(self) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        for group in self.optimizer().param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if scaler is not None:  # the GradScaler skips a step whose gradients are not finite
                    param.grad.fill_(float("nan"))
                else:  # torch optimizers leave parameters without a gradient untouched (no decay, no momentum)
                    param.grad = None
