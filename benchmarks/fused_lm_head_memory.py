"""Memory and time of the per-token KD loss with and without the fused output projection, against N and V.

For `N` distilled tokens, hidden width `D` and vocabulary `V`, forward + backward of `T^2 KL` at T = 1 from the
student's hidden states through its output projection (`lm_head`, `(V, D)`), the teacher given the same way:

    autograd   logits = h @ W.T for both, `F.kl_div(log_softmax(s), log_softmax(t))`, backward (the floor)
    unfused    logits = h @ W.T for both, `hf_distill.token_kd.token_output_loss` (one pass per chunk), backward
    fused      `fused_token_output_loss(h, W, None, ProjectedLogits(h_t, W_t), ...)`: no `(N, V)` tensor at all

"peak MiB" is the peak memory above the inputs (hidden states and weights): on CPU, the rise of the process's peak
resident set size over one forward + backward, in a fresh process per variant and size (Linux): `VmHWM`, the
kernel's high-water mark, reset through `/proc/self/clear_refs` once the inputs exist, minus `VmRSS` then. The
process runs with `MALLOC_MMAP_THRESHOLD_=65536`, so glibc returns every freed tensor to the kernel at once and RSS
follows live memory; a tiny run first loads the kernels and thread pools. (The profiler's event replay,
`_common.tensor_peak_mb`, misattributes the frees of a custom autograd function's long-lived buffers, and
`ru_maxrss` keeps the parent's high-water mark across fork and exec, so neither is used here.) Time is the median
of `--repeats` runs in this process. The script checks that the three give the same loss and gradients (hidden
states and weight). The autograd floor is skipped where its `(N, V)` float32 intermediates would exceed
`--max-floor-gib`.

    nice python benchmarks/fused_lm_head_memory.py          # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from hf_distill.token_kd import ProjectedLogits, fused_token_output_loss, token_output_loss  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000, 256_000])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-floor-gib", type=float, default=0.5, help="skip autograd where N*V*4 bytes exceed it")
    parser.add_argument("--peak-child", nargs=3, metavar=("VARIANT", "TOKENS", "VOCAB"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def inputs(tokens: int, vocab: int, width: int):
    """Student and teacher hidden states `(1, N, D)` and projections `(V, D)`, all made in place (no temporaries)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, width, generator=generator).requires_grad_()
    weight = torch.randn(vocab, width, generator=generator).div_(width**0.5).requires_grad_()
    teacher_hidden = torch.randn(1, tokens, width, generator=generator)
    teacher_weight = torch.randn(vocab, width, generator=generator).div_(width**0.5)
    return hidden, weight, teacher_hidden, teacher_weight, torch.ones(1, tokens, dtype=torch.bool)


def peak_child(variant: str, tokens: int, vocab: int, width: int) -> None:
    """In this fresh process: one forward + backward of `variant`; print the peak RSS rise above the inputs, MiB."""
    run(variant, *inputs(4, 64, width))  # load the kernels and thread pools on a tiny size first
    tensors = inputs(tokens, vocab, width)
    with open("/proc/self/clear_refs", "w") as handle:  # Linux: VmHWM := VmRSS (ru_maxrss would keep the parent's)
        handle.write("5")
    before = _proc_status_mb("VmRSS")
    run(variant, *tensors)
    print(f"PEAK {max(0.0, _proc_status_mb('VmHWM') - before):.1f}")


def _proc_status_mb(field: str) -> float:
    """A `kB` field of /proc/self/status (VmRSS: resident now; VmHWM: its peak since the last reset), in MiB."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def peak_mb(variant: str, tokens: int, vocab: int, opts) -> float:
    """`peak_child` in a fresh process whose glibc returns freed memory at once."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    argv = [sys.executable, __file__, "--peak-child", variant, str(tokens), str(vocab), "--width", str(opts.width),
            "--threads", str(opts.threads)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEAK ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"peak run {argv} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return float(lines[-1].split()[1])


def run(variant: str, hidden, weight, teacher_hidden, teacher_weight, mask):
    hidden.grad = weight.grad = None
    tokens = mask.sum()
    if variant == "fused":
        terms = fused_token_output_loss(hidden, weight, None, ProjectedLogits(teacher_hidden, teacher_weight), None,
                                        mask, 1.0, ce_weight=0.0)  # fmt: skip
        loss = terms.objective / tokens
    else:
        student = F.linear(hidden, weight)  # (1, N, V)
        with torch.no_grad():
            teacher = F.linear(teacher_hidden, teacher_weight)
        if variant == "unfused":
            loss = token_output_loss(student, teacher, None, mask, 1.0, ce_weight=0.0).objective / tokens
        else:
            log_p, log_q = F.log_softmax(student[mask], -1), F.log_softmax(teacher[mask], -1)
            loss = F.kl_div(log_p, log_q, log_target=True, reduction="sum") / tokens
    loss.backward()
    return loss.detach()


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    if opts.peak_child:
        variant, tokens, vocab = opts.peak_child
        return peak_child(variant, int(tokens), int(vocab), opts.width)
    info = _common.machine_info()
    _common.print_machine(info)
    rows = []
    for vocab in opts.vocab:
        for tokens in opts.tokens:
            hidden, weight, teacher_hidden, teacher_weight, mask = inputs(tokens, vocab, opts.width)
            variants = ["unfused", "fused"]
            if tokens * vocab * 4 / 2**30 <= opts.max_floor_gib:
                variants.insert(0, "autograd")
            row = {"tokens": tokens, "vocab": vocab, "logits_MiB": round(tokens * vocab * 4 / 2**20, 1)}
            results = {}
            for variant in variants:
                once = functools.partial(run, variant, hidden, weight, teacher_hidden, teacher_weight, mask)
                result = once()
                peak = peak_mb(variant, tokens, vocab, opts)
                seconds = []
                for _ in range(opts.repeats):
                    started = time.perf_counter()
                    once()
                    seconds.append(time.perf_counter() - started)
                results[variant] = (result, hidden.grad.clone(), weight.grad.clone())  # copied outside the peak
                row[f"{variant}_peak_MiB"] = round(peak, 1)
                if seconds:  # --repeats 0: memory only
                    row[f"{variant}_s"] = round(statistics.median(seconds), 3)
            reference = results[variants[0]]
            for variant in variants[1:]:
                for a, b in zip(results[variant], reference):
                    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
            row["fused_memory_saving"] = round(row["unfused_peak_MiB"] / max(row["fused_peak_MiB"], 1e-9), 1)
            rows.append(row)
            print(row, flush=True)
    print(f"\nper-token KD at T = 1 through a (V, {opts.width}) output projection, forward + backward")
    _common.print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    _common.write_results("fused_lm_head_memory_cpu", {"machine": info, "options": vars(opts), "rows": rows})


if __name__ == "__main__":
    main()
