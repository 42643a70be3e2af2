"""Profile the training steps of two `throughput.py` configurations with cProfile, alternating them.

    nice python benchmarks/profile_steps.py                              # student vs distill_cached, twice each
    nice python benchmarks/profile_steps.py --configs student distill_g0 --steps 24

For each run it prints the median step time and the functions with the most internal time, so a cost that one
configuration adds per step (and the other does not) shows up by name; `throughput.py` gives the ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import throughput  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs=2, default=["student", "distill_cached"], choices=throughput.CONFIGS[:1]
                        + throughput.CONFIGS[2:])  # fmt: skip
    parser.add_argument("--steps", type=int, default=24, help="timed steps per run (after the warm-up steps)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternating")
    parser.add_argument("--top", type=int, default=14, help="functions listed per run")
    opts = parser.parse_args()
    _common.require_sst2()
    bench_opts = throughput.parse_args(["--steps", str(opts.steps), "--rounds", "1"])
    with tempfile.TemporaryDirectory() as tmp:
        bench = throughput.Bench(bench_opts, str(Path(tmp) / "cache"))
        if "distill_cached" in opts.configs:  # build the cache outside the profiled runs
            bench.trainer("distill_cached", str(Path(tmp) / "out"), 1).get_train_dataloader()
        for _ in range(opts.repeats):
            for config in opts.configs:
                profile = cProfile.Profile()
                profile.enable()
                times = bench.run(config, str(Path(tmp) / "out"))
                profile.disable()
                print(f"\n== {config}: median step {statistics.median(times):.4f} s over {len(times)} steps")
                pstats.Stats(profile).sort_stats("tottime").print_stats(opts.top)


if __name__ == "__main__":
    main()
