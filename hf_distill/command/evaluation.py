"""A timed evaluation pass of any task, shared by the `hf-distill` command and the demo.

The metrics themselves are defined in `hf_distill.task_metrics` (the one metrics module; `accuracy`, `binary_f1` and
`load_metrics` are re-exported here for existing imports).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import nested_concat, nested_numpify

from ..labels import IGNORE_INDEX
from ..task_metrics import TaskMetrics, accuracy, binary_f1, load_metrics
from ..tasks import batch_size as examples_in

__all__ = ["EvaluationResult", "accuracy", "binary_f1", "evaluate_model", "load_metrics"]


@dataclass
class EvaluationResult:
    """Metrics and inference speed of one model on one evaluation set."""

    metrics: dict[str, float]
    num_examples: int
    batch_size: int
    seconds: float  # forward passes only, the first (warm-up) batch excluded
    examples_per_second: float
    ms_per_batch: float
    latency_ms_batch1: float | None = None  # median over `latency_samples` single examples
    latency_samples: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "num_examples": self.num_examples,
            "throughput": {
                "batch_size": self.batch_size,
                "examples_per_second": round(self.examples_per_second, 2),
                "ms_per_batch": round(self.ms_per_batch, 3),
                "timed_seconds": round(self.seconds, 4),
            },
            "latency_batch_size_1": {
                "median_ms": None if self.latency_ms_batch1 is None else round(self.latency_ms_batch1, 3),
                "num_examples": self.latency_samples,
            },
            "device": self.device,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _split_labels(batch: dict, label_names: tuple[str, ...]):
    """Take the targets out of `batch`: one tensor, or a tuple for several (QA's start and end), as `Trainer` does."""
    labels = tuple(batch.pop(name) for name in label_names)
    return labels[0] if len(labels) == 1 else labels


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset,
    collator: Callable,
    metrics: TaskMetrics,
    batch_size: int,
    device: torch.device | str,
    latency_samples: int = 32,
) -> EvaluationResult:
    """Predict `dataset` with `model` (eval mode, no grad), compute the task's `metrics`, and time it.

    Predictions go through `metrics.preprocess` batch by batch and are gathered (padded with -100) exactly as
    `Trainer.evaluate` gathers them, so both compute the same numbers. Throughput: every batch of `batch_size` is
    timed after one untimed warm-up batch. Latency: the median time of a forward pass on single examples (the first
    `latency_samples` rows, unpadded). For question answering a long context is several rows (features, one per
    window); `num_examples` and `examples_per_second` then count examples (questions answered), not features. Each
    model is timed on its own, one after the other, on `device`.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    label_names = metrics.task.label_names
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    predictions, references, times, count = None, None, [], 0
    for step, batch in enumerate(loader):
        labels = _split_labels(batch, label_names)
        batch = {k: v.to(device) for k, v in batch.items()}
        if step == 0:
            model(**batch)  # warm-up: first-call allocations and kernel selection stay out of the timing
        _sync(device)
        start = time.perf_counter()
        outputs = model(**batch)
        _sync(device)
        times.append(time.perf_counter() - start)
        kept = metrics.task.evaluation_predictions(model, batch, outputs, send_to_device(labels, device), metrics)
        kept = send_to_device(kept, "cpu")
        predictions = kept if predictions is None else nested_concat(predictions, kept, IGNORE_INDEX)
        references = labels if references is None else nested_concat(references, labels, IGNORE_INDEX)
        count += examples_in(batch)
    seconds = sum(times)

    latencies = []
    for index in range(-1, min(latency_samples, len(dataset))):  # -1: an untimed warm-up at batch size 1
        single = collator([dataset[max(index, 0)]])
        batch = {k: v.to(device) for k, v in single.items() if k not in label_names}
        _sync(device)
        start = time.perf_counter()
        model(**batch)
        _sync(device)
        if index >= 0:
            latencies.append(time.perf_counter() - start)
    model.train(was_training)
    if metrics.references is not None:  # question answering: a long context is several features, one example
        count = metrics.references.num_examples
    return EvaluationResult(
        metrics=metrics.compute(nested_numpify(predictions), nested_numpify(references)),
        num_examples=count,
        batch_size=batch_size,
        seconds=seconds,
        examples_per_second=count / seconds if seconds > 0 else float("inf"),
        ms_per_batch=1000 * seconds / len(times),
        latency_ms_batch1=1000 * statistics.median(latencies) if latencies else None,
        latency_samples=len(latencies),
        device=str(device),
    )
