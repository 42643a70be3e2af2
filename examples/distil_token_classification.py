"""Distil a NER model: an ordinary token-classification fine-tuning script with a few lines swapped.

    python examples/distil_token_classification.py --teacher dslim/bert-base-NER --output_dir distilled-ner
    python examples/distil_token_classification.py --teacher path/to/ner-teacher \\
        --train_file train.jsonl --validation_file dev.jsonl --num_layers 6 --max_steps 2000

Data: CoNLL-2003-style rows, `tokens` (a list of words) and `ner_tags` (a list of BIO tags, as names or ids); the
default is CoNLL-2003 from the Hub. Tag names are mapped to the *teacher's* label ids (`dslim/bert-base-NER` orders
its labels differently from CoNLL-2003's `ner_tags`), so class i means the same thing to teacher, student and data.
Only the first sub-token of each word is labelled; the trainer distils the teacher at exactly those tokens.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForTokenClassification.from_pretrained("bert-base-cased", num_labels=9, id2label=...)
    +teacher = AutoModelForTokenClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=5e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=5e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

from datasets import ClassLabel, load_dataset
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A NER model (path or Hub id), e.g. dslim/bert-base-NER.")
parser.add_argument("--dataset_name", default="eriktks/conll2003", help="Hub dataset, used without --train_file.")
parser.add_argument("--train_file", help="Local json/jsonl/csv with `tokens` and `ner_tags` columns.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-ner")
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
    raw = load_dataset(args.dataset_name)

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForTokenClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers
id2label, label2id = teacher.config.id2label, teacher.config.label2id
tag_feature = raw["train"].features["ner_tags"].feature
tag_names = tag_feature.names if isinstance(tag_feature, ClassLabel) else None  # Hub datasets name their tags


def label_id(tag):
    """The teacher's id for a tag given as a name, a dataset class id, or (local ints) already a teacher id."""
    if isinstance(tag, str):
        return label2id[tag]
    return label2id[tag_names[tag]] if tag_names else tag


def tokenize_and_align(batch):
    encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=128)
    encoded["labels"] = []
    for i, tags in enumerate(batch["ner_tags"]):
        labels, previous = [], None
        for word in encoded.word_ids(i):  # the first sub-token of each word gets its tag, the rest -100
            labels.append(-100 if word is None or word == previous else label_id(tags[word]))
            previous = word
        encoded["labels"].append(labels)
    return encoded


data = raw.map(tokenize_and_align, batched=True, remove_columns=raw["train"].column_names)


def entities(tags):
    """Entity spans `(type, start, end)` of a BIO tag sequence, read as seqeval's default (conlleval) mode does."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        if start is not None and (prefix in ("B", "O") or name != kind):
            spans.add((kind, start, i))
            start = None
        if start is None and prefix in ("B", "I"):
            start, kind = i, name
    return spans


def compute_metrics(prediction):
    predicted, gold = prediction.predictions.argmax(-1), prediction.label_ids
    n_true = n_predicted = n_correct = 0
    for p_row, g_row in zip(predicted, gold):
        keep = g_row != -100  # the labelled first sub-tokens, one per word
        p_spans = entities([id2label[int(i)] for i in p_row[keep]])
        g_spans = entities([id2label[int(i)] for i in g_row[keep]])
        n_true += len(g_spans)
        n_predicted += len(p_spans)
        n_correct += len(p_spans & g_spans)
    precision, recall = n_correct / max(n_predicted, 1), n_correct / max(n_true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((predicted == gold)[gold != -100].mean())
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


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
    temperature=2.0,  # changed: the distillation settings (per-token KD on the labelled tokens)
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
    data_collator=DataCollatorForTokenClassification(tokenizer),
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student, plus distillation_config.json and training_history.json
