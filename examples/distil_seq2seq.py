"""Distil a seq2seq model (BART, T5, Marian): an ordinary `Seq2SeqTrainer` fine-tuning script with a few lines swapped.

    python examples/distil_seq2seq.py --teacher facebook/bart-large-xsum --num_layers 12 --num_decoder_layers 3 \\
        --output_dir distilbart-xsum-12-3
    python examples/distil_seq2seq.py --teacher path/to/t5-teacher --train_file train.jsonl \\
        --validation_file dev.jsonl --num_layers 3 --max_steps 5000

Data: a source and a target text column (`--source_column`, `--target_column`; json/jsonl/csv), the default is XSum
from the Hub (`document` -> `summary`). The student is DistilBART's "shrink and fine-tune": the teacher's
embeddings, `--num_layers` encoder layers and `--num_decoder_layers` decoder layers copied from it
(`build_student`), then trained to match the teacher's decoder distribution at every target token under teacher
forcing (both models read the labels shifted right). Evaluation generates with the student (`predict_with_generate`)
and scores ROUGE-L, BLEU and exact match (`hf_distill.text_metrics`: `evaluate`'s scripts where they load, the same
definitions in-house where not). The student's `generation_config.json` is saved beside it.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
    +from hf_distill import DistillationSeq2SeqArguments, DistillationSeq2SeqTrainer, build_student

    -model = AutoModelForSeq2SeqLM.from_pretrained("facebook/bart-base")
    +teacher = AutoModelForSeq2SeqLM.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=12, num_decoder_layers=3)

    -training_args = Seq2SeqTrainingArguments(output_dir=..., predict_with_generate=True, ...)
    +training_args = DistillationSeq2SeqArguments(output_dir=..., predict_with_generate=True, ..., temperature=2.0)

    -trainer = Seq2SeqTrainer(model=model, args=training_args, ...)
    +trainer = DistillationSeq2SeqTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

import numpy as np
from datasets import load_dataset
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from hf_distill import DistillationSeq2SeqArguments, DistillationSeq2SeqTrainer, build_student  # changed
from hf_distill.text_metrics import text_scores

parser = argparse.ArgumentParser()
parser.add_argument(
    "--teacher", required=True, help="A seq2seq model (path or Hub id), e.g. facebook/bart-large-xsum."
)
parser.add_argument("--dataset_name", default="EdinburghNLP/xsum", help="Hub dataset, used without --train_file.")
parser.add_argument("--train_file", help="Local json/jsonl/csv with the source and target columns.")
parser.add_argument("--validation_file")
parser.add_argument("--source_column", default="document")
parser.add_argument("--target_column", default="summary")
parser.add_argument("--output_dir", default="distilled-seq2seq")
parser.add_argument("--num_layers", type=int, default=6, help="Encoder layers of the student.")
parser.add_argument("--num_decoder_layers", type=int, default=None, help="Decoder layers (default: --num_layers).")
parser.add_argument("--max_steps", type=int, default=-1)
parser.add_argument("--max_source_length", type=int, default=512)
parser.add_argument("--max_target_length", type=int, default=64)
args = parser.parse_args()

if args.train_file:
    extension = args.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
    raw = load_dataset(extension, data_files={"train": args.train_file, "validation": args.validation_file})
else:
    raw = load_dataset(args.dataset_name)

tokenizer = AutoTokenizer.from_pretrained(args.teacher)
teacher = AutoModelForSeq2SeqLM.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers)  # changed


def tokenize(batch):
    inputs = tokenizer(batch[args.source_column], truncation=True, max_length=args.max_source_length)
    targets = tokenizer(text_target=batch[args.target_column], truncation=True, max_length=args.max_target_length)
    return {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "labels": targets["input_ids"],
    }


def compute_metrics(prediction):
    def decode(ids):
        return tokenizer.batch_decode(np.where(ids == -100, tokenizer.pad_token_id, ids), skip_special_tokens=True)

    return text_scores(decode(prediction.predictions), decode(prediction.label_ids))  # rougeL, bleu, exact_match


data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)

training_args = DistillationSeq2SeqArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=5e-5,
    per_device_train_batch_size=8,
    num_train_epochs=3,
    max_steps=args.max_steps,
    warmup_steps=500,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=1000,
    logging_steps=50,
    logging_first_step=True,
    report_to="none",
    predict_with_generate=True,
    generation_max_length=args.max_target_length,
    temperature=2.0,  # changed: the distillation settings (per-token KD on the decoder's targets)
    alpha=0.5,
    beta=0.5,
    gamma=0.0,  # changed: add gamma > 0 / hidden_weight > 0 for the encoder's attention / hidden-state terms
)
trainer = DistillationSeq2SeqTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=data["train"],
    eval_dataset=data["validation"],
    processing_class=tokenizer,
    data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    compute_metrics=compute_metrics,
)
trainer.train()
metrics = trainer.evaluate()
trainer.log_metrics("eval", metrics)
trainer.save_metrics("eval", metrics)  # eval_results.json
trainer.save_model()  # the student, its generation_config.json, distillation_config.json, training_history.json
