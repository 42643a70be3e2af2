"""TinyBERT's learned projection: maps a narrower (or wider) student's hidden states to the teacher's width.

TinyBERT (Jiao et al., 2020, https://arxiv.org/abs/1909.10351, eq. 7-9) compares hidden states through learnable
linear maps trained with the student: `MSE(H_s W_h, H_t)` for the layer outputs, with one `W_h` shared by every
mapped layer, and `MSE(E_s W_e, E_t)` for the embedding output, with its own `W_e`. We follow the paper's equations:
two maps, `embedding` (`W_e`) and `hidden` (`W_h`). (The authors' code applies a single `fit_dense` to the embedding
output and to every layer.) Like that `fit_dense`, both maps are `nn.Linear` with a bias, initialised as BERT's own
linear layers are: normal with the student's `initializer_range`, zero bias.

The projection is trained by `DistillationTrainer` (its own optimizer param groups, gradients averaged over
processes, included in gradient clipping) and saved in each `checkpoint-N/` as `PROJECTION_NAME` so a resumed run
continues exactly; it is never part of the saved student.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from .artifacts import atomic_open

__all__ = ["PROJECTION_NAME", "HiddenProjection", "ZeroGradAfterStep", "add_to_optimizer", "average_gradients"]

PROJECTION_NAME = "distillation_projection.safetensors"


class HiddenProjection(nn.Module):
    """`W_e` (embeddings) and `W_h` (shared by all mapped layers), each `student_width -> teacher_width`.

    Args:
        student_width (`int`): the student's `hidden_size`.
        teacher_width (`int`): the teacher's `hidden_size`.
        init_std (`float`, *optional*, defaults to `0.02`): standard deviation of the normal weight initialisation.
        seed (`int`, *optional*, defaults to `0`): seeds a private generator, so every process builds the same
            projection and the global random state (dropout, data order) is left alone.

    >>> projection = HiddenProjection(32, 64)
    >>> projection(torch.zeros(2, 5, 32), layer=0).shape  # embedding output: W_e
    torch.Size([2, 5, 64])
    """

    def __init__(self, student_width: int, teacher_width: int, init_std: float = 0.02, seed: int = 0) -> None:
        super().__init__()
        self.student_width, self.teacher_width = student_width, teacher_width
        self.embedding = nn.Linear(student_width, teacher_width)  # W_e
        self.hidden = nn.Linear(student_width, teacher_width)  # W_h
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for linear in (self.embedding, self.hidden):
                linear.weight.normal_(0.0, init_std, generator=generator)
                linear.bias.zero_()

    def forward(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """Project `states` (`(B, T, student_width)`): `layer=0` is the embedding output (`W_e`), others `W_h`."""
        linear = self.embedding if layer == 0 else self.hidden
        return linear(states.to(linear.weight.dtype))  # (B, T, teacher_width)

    def describe(self) -> str:
        """How `distillation_config.json` records it, e.g. `learned 32->64: W_e (embeddings), W_h shared by layers`."""
        return f"learned {self.student_width}->{self.teacher_width}: W_e (embeddings), W_h shared by layers"

    def save(self, folder: str | os.PathLike) -> None:
        """Write the weights to `folder/PROJECTION_NAME` atomically (temporary file, fsync, rename)."""
        from safetensors.torch import save

        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        with atomic_open(Path(folder) / PROJECTION_NAME, "wb") as handle:
            handle.write(save(state))

    def load(self, folder: str | os.PathLike) -> None:
        """Load the weights written by `save` from `folder`, onto this module's device and dtype."""
        from safetensors.torch import load_file

        path = Path(folder) / PROJECTION_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"resume_from_checkpoint={str(folder)!r} has no {PROJECTION_NAME}: the learned hidden-state "
                f"projection ({self.describe()}) cannot be restored, so the run would not continue where it "
                "stopped. Resume from a checkpoint written by this version of DistillationTrainer, or start a fresh "
                "run."
            )
        self.load_state_dict(load_file(str(path)), strict=True)


def add_to_optimizer(optimizer: torch.optim.Optimizer, projection: nn.Module, decay_names: list[str],
                     weight_decay: float) -> None:  # fmt: skip
    """Give `projection` two param groups of `optimizer`: weights with `weight_decay`, biases without.

    They take the optimizer's defaults (learning rate, betas, ...), the student's settings, and sit after its groups,
    so the scheduler and a checkpoint's optimizer state cover them. Nothing happens if they are already there.
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(projection.named_parameters())
    if all(id(p) in held for _, p in named):  # a second train() call reuses the optimizer
        return
    for decays, decay in ((True, weight_decay), (False, 0.0)):
        params = [p for name, p in named if (name in decay_names) == decays]
        if not params:
            continue
        try:
            optimizer.add_param_group({"params": params, "weight_decay": decay})
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise TypeError(
                f"the optimizer {type(optimizer).__name__} does not accept the learned hidden-state projection's "
                f"param group ({error}). Choose an `optim` whose optimizer takes extra param groups, e.g. "
                "optim='adamw_torch', or use a student of the teacher's width (no projection)."
            ) from error


def average_gradients(projection: nn.Module) -> None:
    """Average `projection`'s gradients over all processes, as DDP does for the student it wraps (one all-reduce).

    Call once per optimizer step, after the last accumulation micro-batch's backward and before clipping.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    params = list(projection.parameters())
    for param in params:
        if param.grad is None:  # every process must join the all-reduce with the same shapes
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.reshape(-1) for param in params])  # (P,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
    flat /= dist.get_world_size()
    offset = 0
    for param in params:
        param.grad.copy_(flat[offset : offset + param.numel()].view_as(param.grad))
        offset += param.numel()


class ZeroGradAfterStep(TrainerCallback):
    """Clear the projection's gradients after every optimizer step, as `Trainer` does for the student alone
    (`model.zero_grad()`); without it they would add up across steps. Runs also when fp16's scaler skips a step."""

    def __init__(self, projection: nn.Module) -> None:
        self.projection = projection

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.projection.zero_grad(set_to_none=True)
