"""Distil a multiple-choice model (SWAG): an ordinary fine-tuning script with a few lines swapped.

    python examples/distil_multiple_choice.py --teacher path/to/swag-teacher --output_dir distilled-swag
    python examples/distil_multiple_choice.py --teacher path/to/swag-teacher \\
        --train_file train.jsonl --validation_file dev.jsonl --num_layers 6 --max_steps 2000

Data: SWAG's layout, `sent1` (the context), `sent2` (the start of every ending), `ending0`, `ending1`, ... and
`label` (the index of the right ending); the default is SWAG from the Hub. Each choice becomes one sequence,
`[CLS] sent1 [SEP] sent2 ending_i [SEP]`; the model scores each and the trainer distils the teacher's softmax over the
choices (and, with `gamma > 0`, the attention maps of every choice's sequence, averaged per example).

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForMultipleChoice.from_pretrained("bert-base-uncased")
    +teacher = AutoModelForMultipleChoice.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=5e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=5e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

from datasets import load_dataset
from transformers import AutoModelForMultipleChoice, AutoTokenizer, DataCollatorForMultipleChoice

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A multiple-choice model, e.g. for SWAG (path or Hub id).")
parser.add_argument("--dataset_name", default="allenai/swag", help="Hub dataset, used without --train_file.")
parser.add_argument("--train_file", help="Local json/jsonl/csv with sent1, sent2, ending0.. and label.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-swag")
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
    raw = load_dataset(args.dataset_name, "regular")

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForMultipleChoice.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers
endings = sorted((c for c in raw["train"].column_names if c.startswith("ending")), key=lambda c: int(c[6:]))


def tokenize(batch):
    """Each example's choices, as run_swag.py builds them: (sent1, sent2 + " " + ending_i) for every ending."""
    firsts = [context for context in batch["sent1"] for _ in endings]
    seconds = [f"{start} {batch[e][i]}" for i, start in enumerate(batch["sent2"]) for e in endings]
    encoded = tokenizer(firsts, seconds, truncation=True, max_length=128)
    n = len(endings)
    return {k: [v[i : i + n] for i in range(0, len(v), n)] for k, v in encoded.items()}


data = raw.map(tokenize, batched=True, remove_columns=[c for c in raw["train"].column_names if c != "label"])


def compute_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=5e-5,
    per_device_train_batch_size=16,
    num_train_epochs=3,
    max_steps=args.max_steps,
    warmup_steps=100,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=500,
    logging_steps=50,
    logging_first_step=True,
    report_to="none",
    temperature=2.0,  # changed: the distillation settings (KD over the choices, attention of every choice)
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
    data_collator=DataCollatorForMultipleChoice(tokenizer),
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student, plus distillation_config.json and training_history.json
