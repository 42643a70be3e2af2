"""Distil a regression model (STS-B similarity scores): an ordinary GLUE fine-tuning script with a few lines swapped.

    python examples/distil_regression.py --teacher path/to/stsb-teacher --output_dir distilled-stsb
    python examples/distil_regression.py --teacher path/to/stsb-teacher \\
        --train_file train.csv --validation_file dev.csv --num_layers 6 --max_steps 1000

Data: `sentence1`, `sentence2` and a float `label` (STS-B: 0 to 5); the default is GLUE STS-B from the Hub. The
teacher is a `*ForSequenceClassification` with `num_labels=1` (`problem_type="regression"`): the trainer distils its
prediction with a squared error (no temperature: there is no softmax to temper) and adds the squared error to the
label, weighted by `alpha`.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=1)
    +teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=2e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=2e-5, ..., alpha=0.5, beta=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

import numpy as np
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A regression model, num_labels=1 (path or Hub id).")
parser.add_argument("--dataset_name", default="nyu-mll/glue", help="Hub dataset, used without --train_file.")
parser.add_argument("--dataset_config", default="stsb")
parser.add_argument("--train_file", help="Local json/jsonl/csv with sentence1, sentence2 and a float label.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-stsb")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
args = parser.parse_args()

if args.train_file:
    extension = args.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
    files = {"train": args.train_file} | ({"validation": args.validation_file} if args.validation_file else {})
    raw = load_dataset(extension, data_files=files)
    if "validation" not in raw:
        split = raw["train"].train_test_split(test_size=0.1, seed=0)
        raw["train"], raw["validation"] = split["train"], split["test"]
else:
    raw = load_dataset(args.dataset_name, args.dataset_config)

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers


def tokenize(batch):
    encoded = tokenizer(batch["sentence1"], batch["sentence2"], truncation=True, max_length=128)
    encoded["labels"] = [float(y) for y in batch["label"]]
    return encoded


data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)


def compute_metrics(prediction):
    """GLUE's STS-B metrics: Pearson and Spearman correlation (Spearman: Pearson of the ranks; ties are rare)."""
    predicted, gold = prediction.predictions.reshape(-1), prediction.label_ids.reshape(-1)
    ranks = [np.argsort(np.argsort(x)) for x in (predicted, gold)]
    return {"pearson": float(np.corrcoef(predicted, gold)[0, 1]), "spearmanr": float(np.corrcoef(*ranks)[0, 1])}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=2e-5,
    per_device_train_batch_size=32,
    num_train_epochs=5,
    max_steps=args.max_steps,
    warmup_steps=100,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=200,
    logging_steps=50,
    logging_first_step=True,
    report_to="none",
    alpha=0.5,  # changed: the distillation settings (squared errors to the label and to the teacher)
    beta=0.5,
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
