"""An ordinary `Trainer` fine-tuning script, turned into distillation by swapping a few lines.

    python examples/minimal_trainer_swap.py --teacher textattack/bert-base-uncased-SST-2 --output_dir out
    python examples/minimal_trainer_swap.py --teacher path/to/sst2-teacher \\
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/validation.tsv

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)
    +teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=2e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=2e-5, ..., temperature=4.0, alpha=0.05, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse
import csv

from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A model fine-tuned on SST-2 (path or Hub id).")
parser.add_argument("--train_file", help="GLUE-format TSV (sentence<TAB>label); default: GLUE SST-2 from the Hub.")
parser.add_argument("--validation_file")
parser.add_argument("--output_dir", default="distilled-sst2")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
args = parser.parse_args()

if args.train_file:
    files = {"train": args.train_file, "validation": args.validation_file}
    raw = load_dataset("csv", data_files=files, delimiter="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
else:
    raw = load_dataset("nyu-mll/glue", "sst2")

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers


def tokenize(batch):
    return tokenizer(batch["sentence"], truncation=True, max_length=128)


data = raw.map(tokenize, batched=True)


def compute_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=2e-5,
    per_device_train_batch_size=32,
    num_train_epochs=3,
    max_steps=args.max_steps,
    warmup_steps=500,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=500,
    report_to="none",
    temperature=4.0,  # changed: the distillation settings
    alpha=0.05,
    beta=0.45,
    gamma=0.4,
)
trainer = DistillationTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=data["train"],
    eval_dataset=data["validation"],
    processing_class=tokenizer,
    data_collator=DataCollatorWithPadding(tokenizer),
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student, plus distillation_config.json and training_history.json
