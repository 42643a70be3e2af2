"""Distil a sentence-pair classifier (paraphrase, NLI): an ordinary GLUE fine-tuning script with a few lines swapped.

    python examples/distil_sentence_pair.py --teacher textattack/bert-base-uncased-MRPC --output_dir distilled-mrpc
    python examples/distil_sentence_pair.py --teacher path/to/mnli-teacher --dataset_config mnli \\
        --sentence1_column premise --sentence2_column hypothesis --validation_split validation_matched
    python examples/distil_sentence_pair.py --teacher path/to/mrpc-teacher \\
        --train_file train.csv --validation_file dev.csv --max_steps 1000

Data: two text columns and a `label` column (class ids of the teacher, or label names it knows through
`label2id`); the default is GLUE MRPC from the Hub. Both texts go into one input, `[CLS] a [SEP] b [SEP]`, and the
trainer distils the teacher's class distribution, exactly as for single sentences.

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

from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A model fine-tuned on the pair task (path or Hub id).")
parser.add_argument("--dataset_name", default="nyu-mll/glue", help="Hub dataset, used without --train_file.")
parser.add_argument("--dataset_config", default="mrpc")
parser.add_argument("--validation_split", default="validation", help="MNLI: validation_matched.")
parser.add_argument("--sentence1_column", default="sentence1")
parser.add_argument("--sentence2_column", default="sentence2")
parser.add_argument("--train_file", help="Local json/jsonl/csv with the two text columns and `label`.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-pair")
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
    raw["validation"] = raw[args.validation_split]

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers


def tokenize(batch):
    encoded = tokenizer(batch[args.sentence1_column], batch[args.sentence2_column], truncation=True, max_length=128)
    encoded["labels"] = [teacher.config.label2id[y] if isinstance(y, str) else y for y in batch["label"]]
    return encoded


data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)


def compute_metrics(prediction):
    predicted, labels = prediction.predictions.argmax(-1), prediction.label_ids
    metrics = {"accuracy": float((predicted == labels).mean())}
    if teacher.config.num_labels == 2:  # MRPC reports F1 of the positive class too
        true_positives = float(((predicted == 1) & (labels == 1)).sum())
        metrics["f1"] = 2 * true_positives / max(float((predicted == 1).sum() + (labels == 1).sum()), 1.0)
    return metrics


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
