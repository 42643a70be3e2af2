"""Run a language model without its full logits: capture the output projection's input instead (fused loss).

`ProjectionCapture(model)` registers a forward pre-hook on `model.get_output_embeddings()` (the `lm_head`, or
BERT's MLM decoder). Inside `with capture.capturing():` the hook keeps the hidden states the projection receives
and hands it an empty slice of them, so the model returns `(B, 0, V)` logits and no `(B, T, V)` tensor is ever
made; `capture.logits()` then describes the logits as `ProjectedLogits(hidden, weight, bias)`, which
`hf_distill.token_kd.fused_token_output_loss` projects a chunk of rows at a time.

BART, mBART, Pegasus and Marian add a `final_logits_bias` buffer to the head's output; it is folded into the
bias here. `fused_projection_problem` says why a model cannot be run this way (a head that is not a plain
`nn.Linear`, or logits post-processed after it: soft-capping or scaling), or returns `None`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .token_kd import ProjectedLogits

__all__ = ["ProjectionCapture", "fused_projection_problem"]

# config fields of models that change the logits after the projection (Gemma 2, Cohere, Granite, Falcon-H1, ...)
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                         "output_multiplier")  # fmt: skip


def fused_projection_problem(model: nn.Module) -> str | None:
    """Why `model`'s logits cannot be computed as `hidden @ weight.T + bias` outside it, or `None` if they can."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return f"its output projection is a {type(head).__name__}, not an nn.Linear"
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _LOGIT_POSTPROCESSING:
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return f"its config sets {name}={getattr(text_config, name)!r}, which changes the logits after the head"
    return None


class ProjectionCapture:
    """Captures the input of `model`'s output projection and skips the projection itself (see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.head: nn.Linear = model.get_output_embeddings()
        self._model = model  # read at `logits()`: resizing the embeddings replaces `final_logits_bias`
        self._hidden: torch.Tensor | None = None
        self._active = False
        self.head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple):
        if not self._active:
            return None
        (hidden, *rest) = args
        self._hidden = hidden  # (B, T, D)
        return (hidden[..., :0, :], *rest)  # the head computes (B, 0, V): nothing

    @contextlib.contextmanager
    def capturing(self) -> Iterator[ProjectionCapture]:
        self._active, self._hidden = True, None
        try:
            yield self
        finally:
            self._active = False

    def logits(self) -> ProjectedLogits:
        """The captured hidden states with the head's weight and bias; errors if the model never called its head."""
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError(
                f"the model never called its output projection ({type(self.head).__name__}) during the forward, so "
                "the fused loss has no hidden states. Set fuse_lm_head=False."
            )
        bias = self.head.bias
        final_bias = getattr(self._model, "final_logits_bias", None)  # (1, V) buffer, added after the head
        if isinstance(final_bias, torch.Tensor):
            final_bias = final_bias.reshape(-1)
            bias = final_bias if bias is None else bias + final_bias
        return ProjectedLogits(hidden, self.head.weight, bias)
