"""Memory and time of token-level KD over a large vocabulary: row-wise autograd vs hf-distill's chunked loss.

A causal LM distils every next-token prediction: `N` rows of `V` logits (GPT-2: V = 50,257). Written with autograd,
`T^2 * KL(softmax(t/T) || softmax(s/T))` holds both float32 log-softmaxes, the teacher's probabilities and their
product, and keeps some of them for the backward pass. `hf_distill.losses.token_soft_label_loss` computes it a
cache-sized chunk of rows at a time (`hf_distill.token_kd`) and keeps only the gradient, computed in forward.

For each `N` we measure, on the same random logits (float32, like a model's output under fp32 training):

    autograd   `soft_label_loss` on the selected rows, then `.backward()` (what the trainer did before)
    chunked    `token_soft_label_loss`, then `.backward()`

"peak MiB" is the peak tensor memory above the inputs (the logits, which a training step holds anyway), from
`_common.tensor_peak_mb` (profiler allocation events on CPU, `max_memory_allocated` on CUDA); the time is the
median of `--repeats` runs of forward + backward. Both variants give the same loss and gradient (checked here,
and by tests/test_losses_catalogue.py).

    nice python benchmarks/token_kd_memory.py              # CPU, about a minute
    python benchmarks/token_kd_memory.py --device cuda     # CUDA memory and time

Results: a table on stdout and `benchmarks/results/token_kd_memory_<device>.json`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from hf_distill.losses import soft_label_loss, token_soft_label_loss  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50_257, help="vocabulary size V (default: GPT-2's)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="distilled tokens N per step")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(variant: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float):
    student.grad = None
    if variant == "autograd":
        loss = soft_label_loss(student[mask], teacher[mask], temperature, reduction="sum") / mask.sum()
    else:
        loss = token_soft_label_loss(student, teacher, mask, temperature)
    loss.backward()
    return loss.detach(), student.grad.clone()


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    info = _common.machine_info()
    _common.print_machine(info)
    device = torch.device(opts.device)
    rows = []
    for tokens in opts.tokens:
        generator = torch.Generator().manual_seed(0)
        shape = (1, tokens, opts.vocab)
        student = (2 * torch.randn(shape, generator=generator)).to(device).requires_grad_()
        teacher = (2 * torch.randn(shape, generator=generator)).to(device)
        mask = torch.ones(1, tokens, dtype=torch.bool, device=device)
        results = {}
        for variant in ("autograd", "chunked"):
            once = functools.partial(run, variant, student, teacher, mask, opts.temperature)
            peak, (loss, grad) = _common.tensor_peak_mb(once, device)
            times = []
            for _ in range(opts.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                once()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            results[variant] = (peak, statistics.median(times), loss, grad)
            student.grad = None
        (a_peak, a_time, a_loss, a_grad), (c_peak, c_time, c_loss, c_grad) = results["autograd"], results["chunked"]
        torch.testing.assert_close(c_loss, a_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c_grad, a_grad, rtol=1e-4, atol=1e-8)
        logits_mb = tokens * opts.vocab * 4 / 2**20
        rows.append({
            "tokens": tokens, "vocab": opts.vocab, "logits_MiB": round(logits_mb, 1),
            "autograd_peak_MiB": round(a_peak, 1), "chunked_peak_MiB": round(c_peak, 1),
            "memory_ratio": round(a_peak / c_peak, 2), "autograd_s": round(a_time, 3), "chunked_s": round(c_time, 3),
            "time_ratio": round(c_time / a_time, 2),
        })  # fmt: skip
    print(f"\n{device.type}: token-level KD, forward + backward, T = {opts.temperature}")
    _common.print_table(rows, list(rows[0]))
    print("peak MiB: above the student and teacher logits; the gradient (one logits-sized tensor) is included")
    _common.write_results(f"token_kd_memory_{device.type}", {"machine": info, "options": vars(opts), "rows": rows})


if __name__ == "__main__":
    main()
