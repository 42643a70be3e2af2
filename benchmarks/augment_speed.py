"""How long augmentation for a transfer set takes on SST-2: embedding neighbours, then the variants.

Times, with the real MiniLM-L6 vocabulary (30,522 entries) and input embeddings:

    neighbours   `embedding_neighbours(teacher, tokenizer)`: top-15 cosine neighbours of every whole word
    texts        `augment_texts` on every SST-2 training sentence, `--multiplier` variants each (defaults)
    dataset      `augment_dataset` on the same rows: the variants plus building the `datasets.Dataset`

Commands (from the repository root):

    nice python benchmarks/augment_speed.py                  # all 53,609 training rows x 2, about a minute
    python benchmarks/augment_speed.py --quick               # 5,000 rows

Results: a table on stdout and `benchmarks/results/augment_speed_cpu.json`.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import load_teacher_and_tokenizer, machine_info, read_sst2, write_results

from hf_distill import augment_dataset, augment_texts, embedding_neighbours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--multiplier", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5,000 rows")
    opts = parser.parse_args()

    rows = read_sst2("train", limit=5_000 if opts.quick else None)
    teacher, tokenizer = load_teacher_and_tokenizer()
    timings = {}
    start = time.perf_counter()
    neighbours = embedding_neighbours(teacher, tokenizer, top_k=15)
    timings["neighbours"] = time.perf_counter() - start

    start = time.perf_counter()
    variants = augment_texts(rows["sentence"], multiplier=opts.multiplier, tokenizer=tokenizer,
                             word_neighbours=neighbours)  # fmt: skip
    timings["texts"] = time.perf_counter() - start
    made = sum(map(len, variants))

    from datasets import Dataset

    start = time.perf_counter()
    augmented = augment_dataset(Dataset.from_dict(rows), "sentence", opts.multiplier, tokenizer=tokenizer,
                                word_neighbours=neighbours)  # fmt: skip
    timings["dataset"] = time.perf_counter() - start
    assert len(augmented) == len(rows["label"]) + made

    words = sum(len(s.split()) for s in rows["sentence"])
    print(f"{len(rows['label']):,} rows ({words:,} words) x {opts.multiplier}: {made:,} distinct variants "
          f"({made / (opts.multiplier * len(rows['label'])):.1%} of the requested); torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print("| step | seconds |\n| --- | --- |")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} |")
    print("examples:")
    for sentence, out in list(zip(rows["sentence"], variants))[:3]:
        print(f"  {sentence.strip()!r} -> {out}")
    write_results(
        "augment_speed_cpu",
        {"machine": machine_info(), "rows": len(rows["label"]), "words": words, "multiplier": opts.multiplier,
         "variants": made, "neighbour_words": len(neighbours), "seconds": timings},
    )  # fmt: skip


if __name__ == "__main__":
    main()
