"""How much the teacher's soft targets say beyond the hard labels, on the rows the students train on.

Hinton's KD adds information where the teacher's distribution differs from the one-hot label: on the wrong class's
probability ("dark knowledge") and on rows where the teacher disagrees with the label. A teacher fine-tuned on the
very rows the student trains on has fitted them: if its targets there are nearly one-hot and agree with the labels,
soft targets carry little that cross-entropy does not, whatever the loss. This script measures that for the
teacher of `quality.py` (read from its cache; it never trains one), on `--rows` rows the students draw from and on
the validation set, at T = 1 and at the recommended T = 2:

    accuracy          agreement of the teacher's argmax with the label
    p_max             mean probability of its top class
    entropy_bits      mean entropy of its distribution (1 bit: uniform over two classes)
    near_one_hot      share of rows with p_max > 0.99
    kl_to_label_bits  mean KL(one-hot label || teacher) = -log2 p(label): what a CE step would still push

Commands (repository root; pass the teacher options the study used, e.g. `--teacher-max-epochs 0.6` for mpnet):

    python benchmarks/teacher_signal.py --scale mpnet --teacher-max-epochs 0.6 --student-rows 0.25
    python benchmarks/teacher_signal.py --scale small --split-teacher   # also scores the teacher's own half
    python benchmarks/teacher_signal.py --scale small --split-teacher sentences
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import quality  # noqa: E402


def signal(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    log_p = torch.log_softmax(logits.double() / temperature, dim=-1)
    p = log_p.exp()
    top = p.max(dim=-1).values
    return {
        "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
        "p_max": top.mean().item(),
        "entropy_bits": (-(p * log_p).sum(-1) / math.log(2)).mean().item(),
        "near_one_hot": (top > 0.99).double().mean().item(),
        "kl_to_label_bits": (-log_p.gather(-1, labels[:, None]).squeeze(-1) / math.log(2)).mean().item(),
    }


def teacher_logits(teacher, dataset, collator, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    logits, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            labels.append(batch.pop("labels"))
            logits.append(teacher(**batch).logits.float())
    return torch.cat(logits), torch.cat(labels)


def main(argv: list[str] | None = None) -> None:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument("--rows", type=int, default=2000, help="training rows to score")
    mine, rest = own.parse_known_args(argv)  # the rest are quality.py's options, to find its teacher
    opts, rows = quality.parse_args(rest), mine.rows
    if opts.threads:
        torch.set_num_threads(opts.threads)
    sst2 = _common.require_sst2()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    data_key = quality.file_digest(sst2 / "train.tsv", sst2 / "validation.tsv")
    _, _, folder = quality.teacher_cache(opts, data_key)
    if not (folder / "teacher_eval.json").is_file():
        sys.exit(f"no trained teacher at {folder}: run benchmarks/quality.py with the same options first.")
    tokenizer = AutoTokenizer.from_pretrained(quality.pretrained_path(opts.scale))
    train = _common.tokenized_sst2(tokenizer, "train", opts.max_length)
    teacher_rows, pool = train, train
    if opts.split_teacher:  # the halves quality.py trained on
        sentences = _common.read_sst2("train")["sentence"] if opts.split_teacher == "sentences" else None
        teacher_rows, pool = quality.disjoint_halves(train, sentences)

    def first_rows(dataset):
        return dataset.select(range(min(rows, len(dataset))))

    splits = [("train rows", first_rows(quality.student_rows(pool, opts.student_rows)))]  # what the students draw from
    if opts.split_teacher:  # beside them, the half the teacher was fine-tuned on
        splits.append(("teacher's own rows", first_rows(teacher_rows)))
    val = _common.tokenized_sst2(tokenizer, "validation", opts.max_length)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    collator = DataCollatorWithPadding(tokenizer)
    result = {"scale": opts.scale, "teacher": str(folder.relative_to(_common.ROOT)), "machine": _common.machine_info()}
    table = []
    for split, dataset in (*splits, ("validation", val)):
        logits, labels = teacher_logits(teacher, dataset, collator)
        for temperature in (1.0, 2.0):
            row = {"split": split, "rows": len(labels), "T": temperature, **signal(logits, labels, temperature)}
            table.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    result["rows"] = table
    _common.print_table(table, list(table[0]))
    suffix = {None: "", "rows": "_split", "sentences": "_split_sentences"}[opts.split_teacher]
    _common.write_results(f"teacher_signal_{opts.scale}{suffix}", result)


if __name__ == "__main__":
    main()
