"""[`TermMeter`]: the running sums of each loss term, for the logs and for the non-finite guard.

`compute_loss` hands the meter `{term: (per-example values, counts)}` for every batch. The meter keeps, per mode
(`"train"`, `"eval"`), each term's summed values and units since the last log (`pop_means` averages them), and, in
training, the current optimizer step's sum of each weighted term, which the non-finite guard (`hf_distill.guards`)
reads once per step. Nothing here syncs with the host until `pop_means` or the guard asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .terms import registered_terms

__all__ = ["TermMeter"]

Terms = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


class TermMeter:
    """Per-term sums of a run (see the module docstring).

    Args:
        weights (`dict[str, float]`): each term's weight; only terms with a weight > 0 count for the step sums.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)
        self._sums: dict[str, dict[str, list[torch.Tensor]]] = {"train": {}, "eval": {}}
        self._step: dict[str, torch.Tensor] = {}
        self._window: dict[str, list[torch.Tensor]] = {}

    def add(self, mode: str, terms: Terms, keep: int | None = None) -> None:
        """Add per-example term values and counts (each `(B,)`, the first `keep` rows) to the sums of `mode`."""
        sums = self._sums[mode]
        for name, (values, counts) in terms.items():
            total, count = values.detach()[:keep].float().sum(), counts.detach()[:keep].float().sum()
            if name in sums:
                sums[name][0] += total
                sums[name][1] += count
            else:
                sums[name] = [total.clone(), count.clone()]
            if mode == "train" and self.weights.get(name, 0) > 0:
                self._step[name] = self._step[name] + total if name in self._step else total

    def pop_means(
        self, mode: str, device: torch.device | str | None = None, reduce: Callable | None = None
    ) -> dict[str, float]:
        """Each term's mean over its units since the last call, in registry order; `reduce` sums across processes.

        Terms without a unit in the window (e.g. no labelled row: no CE) are left out rather than reported as 0."""
        sums = self._sums[mode]
        means = {}
        for name in (term.name for term in registered_terms()):
            if name not in sums:
                continue
            pair = torch.stack(sums[name]).to(device)
            if reduce is not None:
                pair = reduce(pair)
            total, count = pair.tolist()
            if count > 0:
                means[name] = total / count
        sums.clear()
        return means

    def clear(self, mode: str) -> None:
        self._sums[mode].clear()

    # ---- one optimizer step, for the non-finite guard ---------------------------------------------------------

    def begin_step(self) -> None:
        """Start an optimizer step: forget the last step's sums and remember the logging window as it is."""
        self._step.clear()
        self._window = {name: [t.clone() for t in pair] for name, pair in self._sums["train"].items()}

    def take_step_sums(self) -> dict[str, torch.Tensor]:
        """The summed value of each weighted term in this step (0-d tensors, not synced); the sums restart."""
        step, self._step = self._step, {}
        return step

    def forget_step(self) -> None:
        """Take this step's values out of the logging window (the step was skipped)."""
        self._sums["train"].clear()
        self._sums["train"].update(self._window)
