"""Distil a multi-label classifier (GoEmotions): an ordinary fine-tuning script with a few lines swapped.

    python examples/distil_multi_label.py --teacher path/to/go-emotions-teacher --output_dir distilled-emotions
    python examples/distil_multi_label.py --teacher path/to/multi-label-teacher \\
        --train_file train.jsonl --validation_file dev.jsonl --num_layers 6 --max_steps 2000

Data: `text` and `labels`, a list of the teacher's label names or ids per row (any number, none included); the
default is GoEmotions (simplified) from the Hub. The teacher is a `*ForSequenceClassification` with
`problem_type="multi_label_classification"`: one sigmoid per label. The trainer distils each label's tempered
sigmoid (a binary KL, `T^2`-scaled, averaged over the labels) and adds the binary cross-entropy to the multi-hot
labels, weighted by `alpha`.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=28,
    -                                                           problem_type="multi_label_classification")
    +teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=5e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=5e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

import numpy as np
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A multi-label model (path or Hub id).")
parser.add_argument("--dataset_name", default="google-research-datasets/go_emotions", help="Without --train_file.")
parser.add_argument("--dataset_config", default="simplified")
parser.add_argument("--train_file", help="Local json/jsonl with `text` and `labels` (a list per row).")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-multi-label")
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
num_labels, label2id = teacher.config.num_labels, teacher.config.label2id


def tokenize(batch):
    encoded = tokenizer(batch["text"], truncation=True, max_length=128)
    encoded["labels"] = []
    for row in batch["labels"]:  # multi-hot floats: BCE targets
        hot = [0.0] * num_labels
        for label in row:
            hot[label2id[label] if isinstance(label, str) else label] = 1.0
        encoded["labels"].append(hot)
    return encoded


data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)


def compute_metrics(prediction):
    predicted, gold = prediction.predictions > 0, prediction.label_ids > 0.5  # probability > 0.5
    true_positives = float((predicted & gold).sum())
    f1 = 2 * true_positives / max(float(predicted.sum() + gold.sum()), 1.0)
    return {"micro_f1": f1, "exact_match": float(np.all(predicted == gold, axis=1).mean())}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=5e-5,
    per_device_train_batch_size=32,
    num_train_epochs=3,
    max_steps=args.max_steps,
    warmup_steps=100,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=500,
    logging_steps=50,
    logging_first_step=True,
    report_to="none",
    temperature=2.0,  # changed: the distillation settings (per-label sigmoid KD)
    alpha=0.5,
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
