"""Distil a sentence classifier on SST-2 with any launcher: one process, torchrun, accelerate, DeepSpeed or FSDP.

The script is the same in every case; only the launch command changes (see docs/distributed.md):

    python examples/distributed/distill_sst2.py --teacher TEACHER --student STUDENT --output_dir out
    torchrun --nproc_per_node 2 examples/distributed/distill_sst2.py --teacher TEACHER --student STUDENT \
        --output_dir out
    accelerate launch --config_file examples/distributed/accelerate_deepspeed_zero3.yaml \
        examples/distributed/distill_sst2.py --teacher TEACHER --student STUDENT --output_dir out --bf16

`--teacher` and `--student` are paths or Hub ids of BERT-family models with the same tokenizer; the teacher is
ideally fine-tuned on SST-2 already. `--train_file` / `--validation_file` default to the GLUE TSVs
(`sentence<TAB>label`) in ../shared/data/sst2. Every `DistillationArguments` field is a flag (`--gamma 0.4`,
`--teacher_dtype bfloat16`, `--deepspeed examples/distributed/deepspeed_zero2.json`, ...).
"""

from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from hf_distill import DistillationArguments, DistillationTrainer


@dataclass
class ScriptArguments:
    teacher: str = field(metadata={"help": "Teacher path or Hub id (a sequence classifier with 2 labels)."})
    student: str = field(metadata={"help": "Student path or Hub id, same tokenizer as the teacher."})
    train_file: str = field(default="../shared/data/sst2/train.tsv", metadata={"help": "TSV: sentence, label."})
    validation_file: str = field(default="../shared/data/sst2/validation.tsv", metadata={"help": "TSV for eval."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation rows."})
    max_length: int = field(default=128, metadata={"help": "Truncate sentences to this many tokens."})


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DistillationArguments)).parse_args_into_dataclasses()
    tokenizer = AutoTokenizer.from_pretrained(script.teacher)
    files = {"train": script.train_file, "validation": script.validation_file}
    data = load_dataset("csv", delimiter="\t", data_files=files, quoting=3)  # 3: csv.QUOTE_NONE, as GLUE
    if script.max_train_samples:
        data["train"] = data["train"].select(range(script.max_train_samples))
    if script.max_eval_samples:
        data["validation"] = data["validation"].select(range(script.max_eval_samples))
    data = data.map(lambda rows: tokenizer(rows["sentence"], truncation=True, max_length=script.max_length),
                    batched=True, remove_columns=["sentence"])  # fmt: skip

    # Load after the arguments: under ZeRO-3 they turn on zero.Init, so both models load partitioned.
    teacher = AutoModelForSequenceClassification.from_pretrained(script.teacher, num_labels=2)
    student = AutoModelForSequenceClassification.from_pretrained(script.student, num_labels=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data["train"],
        eval_dataset=data["validation"], processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
