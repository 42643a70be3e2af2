"""Distil an extractive QA model: an ordinary SQuAD fine-tuning script with a few lines swapped.

    python examples/distil_question_answering.py --teacher distilbert/distilbert-base-cased-distilled-squad \\
        --output_dir distilled-squad --num_layers 3
    python examples/distil_question_answering.py --teacher path/to/squad-teacher \\
        --train_file train.json --validation_file dev.json --max_steps 2000

Data: SQuAD-style rows, `question`, `context` and `answers` (`{"text": [...], "answer_start": [...]}`); the default is
SQuAD from the Hub. Each example becomes one feature: the context is truncated to `--max_length` tokens (no
sliding window), and an answer cut off by the truncation points at `[CLS]`, as in BERT's SQuAD 2.0 recipe. The
trainer distils the teacher's start and end distributions over the real tokens.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForQuestionAnswering.from_pretrained("bert-base-cased")
    +teacher = AutoModelForQuestionAnswering.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=3e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=3e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse
import collections
import re
import string

import numpy as np
from datasets import load_dataset
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="An extractive QA model (path or Hub id).")
parser.add_argument("--dataset_name", default="rajpurkar/squad", help="Hub dataset, used without --train_file.")
parser.add_argument("--train_file", help="Local json/jsonl with `question`, `context` and `answers` columns.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-squad")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
parser.add_argument("--max_length", type=int, default=384, help="Question + context tokens per feature.")
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
teacher = AutoModelForQuestionAnswering.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers


def prepare(batch):
    questions = [question.lstrip() for question in batch["question"]]
    encoded = tokenizer(questions, batch["context"], truncation="only_second", max_length=args.max_length,
                        return_offsets_mapping=True)  # fmt: skip
    encoded["start_positions"], encoded["end_positions"] = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)  # None for special tokens, 0 for the question, 1 for the context
        context = [k for k, sequence in enumerate(sequence_ids) if sequence == 1]
        answer = batch["answers"][i]
        start = end = 0  # no answer, or cut off by the truncation: point at [CLS]
        if answer["text"]:
            start_char = answer["answer_start"][0]
            end_char = start_char + len(answer["text"][0])
            if offsets[context[0]][0] <= start_char and end_char <= offsets[context[-1]][1]:
                start = next(k for k in context if offsets[k][1] > start_char)
                end = next(k for k in reversed(context) if offsets[k][0] < end_char)
        encoded["start_positions"].append(start)
        encoded["end_positions"].append(end)
        # keep the character offsets of context tokens only, to turn predicted positions back into text
        encoded["offset_mapping"][i] = [o if s == 1 else None for o, s in zip(offsets, sequence_ids)]
    return encoded


data = raw.map(prepare, batched=True, remove_columns=raw["train"].column_names)
eval_examples, eval_features = raw["validation"], data["validation"]  # one feature per example, same order


def best_span(start_logits, end_logits, offsets, max_answer_tokens=30):
    """The character span of the highest-scoring `start <= end` token span inside the context."""
    n = len(offsets)
    in_context = np.array([offset is not None for offset in offsets])
    scores = start_logits[:n, None] + end_logits[None, :n]  # (T, T): start i, end j
    band = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(np.ones((n, n), dtype=bool), k=max_answer_tokens)
    scores = np.where(band & in_context[:, None] & in_context[None, :], scores, -np.inf)
    start, end = np.unravel_index(scores.argmax(), scores.shape)
    return offsets[start][0], offsets[end][1]


PUNCTUATION = set(string.punctuation)


def normalize(text):
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction, truth):
    predicted, true = normalize(prediction).split(), normalize(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if common == 0:
        return float(predicted == true)  # both empty counts as a match
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def compute_metrics(prediction):
    start_logits, end_logits = prediction.predictions  # (N, T) each, padded with -100 across batches
    exact = f1 = 0.0
    for i, (example, offsets) in enumerate(zip(eval_examples, eval_features["offset_mapping"])):
        first, last = best_span(start_logits[i], end_logits[i], offsets)
        text, truths = example["context"][first:last], example["answers"]["text"] or [""]
        exact += max(float(normalize(text) == normalize(truth)) for truth in truths)
        f1 += max(token_f1(text, truth) for truth in truths)
    return {"exact_match": 100 * exact / len(eval_examples), "f1": 100 * f1 / len(eval_examples)}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=3e-5,
    per_device_train_batch_size=16,
    num_train_epochs=2,
    max_steps=args.max_steps,
    warmup_steps=500,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=2000,
    logging_steps=50,
    logging_first_step=True,
    report_to="none",
    temperature=2.0,  # changed: the distillation settings (KD on the start and end distributions)
    alpha=0.5,
    beta=0.5,
    gamma=0.4,
)
trainer = DistillationTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=data["train"],
    eval_dataset=eval_features,
    processing_class=tokenizer,
    data_collator=DataCollatorWithPadding(tokenizer),
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student, plus distillation_config.json and training_history.json
