"""Memory of the teacher's attention maps: hooks on the mapped layers only vs `output_attentions=True` everywhere.

For teachers of 6 (the real MiniLM-L6), 12 and 24 layers (the same architecture, deeper; random weights, which do
not change memory) we measure the peak tensor memory of one `no_grad` teacher forward on a batch of SST-2 rows
padded to a fixed length, in three ways, keeping the maps alive as a training step does until its loss is built:

    plain     the forward pass alone (default `sdpa` attention), no maps: the floor
    naive     eager attention with `output_attentions=True`: every layer's (B, H, T, T) map is returned and held,
              and the mapped ones are picked out afterwards
    ours      `AttentionRecorder` on the mapped layers (1, 3 or 6 of them, uniform map): the model computes with the
              `sdpa` kernel; the q/k that those layers pass to the attention interface are recorded and their maps
              rebuilt in float32

"attention MiB" is the peak minus the plain forward's peak: the memory the attention term costs. It should grow
with the number of mapped layers (ours) and with the teacher's depth (naive), and the ratio naive / ours at 3
mapped layers (a 3-layer student) is the saving.

Commands (from the repository root):

    nice python benchmarks/attention_memory.py              # CPU, a few minutes on 2 cores
    python benchmarks/attention_memory.py --quick           # smoke run: batch 8, 64 tokens, depths 6 and 12
    python benchmarks/attention_memory.py --device cuda     # CUDA peak memory instead of profiler accounting

Results: a table on stdout and `benchmarks/results/attention_memory_<device>.json`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="every row padded to this many tokens")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24], help="teacher layer counts")
    parser.add_argument("--mapped", type=int, nargs="+", default=[1, 3, 6], help="mapped layer counts")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.length, args.depths, args.mapped = 8, 64, [6, 12], [1, 3]
    return args


def deeper(teacher, depth: int):
    """The teacher's architecture with `depth` layers (its own weights when depth matches, else random)."""
    if depth == teacher.config.num_hidden_layers:
        return copy.deepcopy(teacher)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = depth
    torch.manual_seed(0)
    return type(teacher)(config)


def measure(model, batch: dict, method: str, layer_map: list[int] | None, device: str) -> float:
    from hf_distill.attention import AttentionRecorder

    model = model.eval()
    if method == "naive":
        model.set_attn_implementation("eager")

        def run():
            with torch.no_grad():
                outputs = model(**batch, output_attentions=True)
            assert len(outputs.attentions) == model.config.num_hidden_layers  # every layer's map came back
            return outputs, [outputs.attentions[i] for i in layer_map]

        peak, _ = _common.tensor_peak_mb(run, device)
        model.set_attn_implementation("sdpa")
        return peak
    if method == "plain":

        def run():
            with torch.no_grad():
                return model(**batch)

        return _common.tensor_peak_mb(run, device)[0]
    recorder = AttentionRecorder(model, layer_map)

    def run():
        with torch.no_grad(), recorder.recording():
            outputs = model(**batch)
        return outputs, recorder.attention_maps()

    return _common.tensor_peak_mb(run, device)[0]


def main(argv: list[str] | None = None) -> None:
    from hf_distill import default_layer_map

    opts = parse_args(argv)
    _common.require_sst2()
    info = _common.machine_info()
    _common.print_machine(info)
    teacher, tokenizer = _common.load_teacher_and_tokenizer(seed=0)
    rows = _common.read_sst2("validation", limit=opts.batch_size)["sentence"]
    batch = dict(tokenizer(rows, padding="max_length", truncation=True, max_length=opts.length, return_tensors="pt"))
    batch = {k: v.to(opts.device) for k, v in batch.items()}
    heads = teacher.config.num_attention_heads
    one_map_mb = opts.batch_size * heads * opts.length**2 * 4 / 2**20  # (B, H, T, T) float32

    results = []
    for depth in opts.depths:
        model = deeper(teacher, depth).to(opts.device)
        plain = measure(model, batch, "plain", None, opts.device)
        naive = measure(model, batch, "naive", default_layer_map(3, depth), opts.device)
        results.append({"teacher_layers": depth, "method": "plain", "mapped": 0, "peak_mb": plain})
        results.append({"teacher_layers": depth, "method": "naive", "mapped": "all", "peak_mb": naive})
        for mapped in opts.mapped:
            if mapped > depth:
                continue
            ours = measure(model, batch, "ours", default_layer_map(mapped, depth), opts.device)
            results.append({"teacher_layers": depth, "method": "ours", "mapped": mapped, "peak_mb": ours})
        for row in results:
            if row["teacher_layers"] == depth:
                row["attention_mb"] = row["peak_mb"] - plain
                row["maps_held"] = {"plain": 0, "naive": depth}.get(row["method"], row["mapped"])
        print(f"depth {depth}: " + ", ".join(f"{r['method']}/{r['mapped']} {r['peak_mb']:.0f} MiB"
                                            for r in results if r["teacher_layers"] == depth), flush=True)  # fmt: skip
        del model

    summary = {}
    for depth in opts.depths:
        by = {(r["method"], r["mapped"]): r["attention_mb"] for r in results if r["teacher_layers"] == depth}
        if ("ours", 3) in by and by[("ours", 3)] > 0:
            summary[f"naive / ours (3 mapped), attention memory, {depth}-layer teacher"] = (
                by[("naive", "all")] / by[("ours", 3)]
            )
        peaks = {(r["method"], r["mapped"]): r["peak_mb"] for r in results if r["teacher_layers"] == depth}
        if ("ours", 3) in peaks:
            summary[f"naive / ours (3 mapped), whole forward peak, {depth}-layer teacher"] = (
                peaks[("naive", "all")] / peaks[("ours", 3)]
            )

    print(
        f"\n{opts.device}: batch {opts.batch_size} x {opts.length} tokens, {heads} heads; one (B, H, T, T) float32 "
        f"map = {one_map_mb:.1f} MiB; peak tensor memory of a no_grad teacher forward that keeps its maps"
    )
    _common.print_table(results, ["teacher_layers", "method", "mapped", "maps_held", "peak_mb", "attention_mb"])
    for name, value in summary.items():
        print(f"{name}: {value:.2f}")
    _common.write_results(
        f"attention_memory_{opts.device}{'_quick' if opts.quick else ''}",
        {"machine": info, "options": vars(opts), "one_map_mb": one_map_mb, "results": results, "summary": summary},
    )


if __name__ == "__main__":
    main()
