"""Distil a causal language model: an ordinary GPT-2 fine-tuning script with a few lines swapped.

    python examples/distil_causal_lm.py --teacher gpt2 --output_dir distilled-gpt2-wikitext --num_layers 6
    python examples/distil_causal_lm.py --teacher path/to/gpt2-teacher --train_file train.jsonl \\
        --validation_file dev.jsonl --max_steps 5000

Data: a `text` column (json/jsonl/csv); the default is WikiText-2 from the Hub. The texts are tokenized,
concatenated and cut into blocks of `--block_size` tokens; `DataCollatorForLanguageModeling(mlm=False)` copies the
inputs into the labels. The trainer distils the teacher's next-token distribution at every position. The
attention term stays off (`gamma=0.0`): it needs separate query/key/value projections and no rotary positions,
which GPT-2 (fused `c_attn`) and Llama-style models (rotary) do not have. `recipe="hinton"` (CE + KD) is the same.
`perplexity = exp(eval_loss)`, the student's next-token cross-entropy, as with plain fine-tuning.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForCausalLM.from_pretrained("gpt2")
    +teacher = AutoModelForCausalLM.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=5e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=5e-5, ..., temperature=2.0, gamma=0.0, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse
import math
from itertools import chain

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="A causal language model (path or Hub id), e.g. gpt2.")
parser.add_argument("--dataset_name", default="Salesforce/wikitext", help="Hub dataset, used without --train_file.")
parser.add_argument("--dataset_config", default="wikitext-2-raw-v1")
parser.add_argument("--train_file", help="Local json/jsonl/csv with a `text` column.")
parser.add_argument("--validation_file", help="Default: 10%% of --train_file.")
parser.add_argument("--output_dir", default="distilled-clm")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
parser.add_argument("--block_size", type=int, default=512, help="Tokens per training sequence.")
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
if tokenizer.pad_token is None:  # GPT-2 has none; the collator needs one (the blocks have equal lengths anyway)
    tokenizer.pad_token = tokenizer.eos_token
teacher = AutoModelForCausalLM.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers


def tokenize(batch):
    return tokenizer([text for text in batch["text"] if text.strip()])  # WikiText has empty lines


def group_texts(batch):
    """Concatenate the tokenized texts and cut them into blocks of `block_size` tokens (the remainder is dropped)."""
    joined = {key: list(chain(*batch[key])) for key in batch}
    length = len(joined["input_ids"]) // args.block_size * args.block_size
    return {
        key: [ids[i : i + args.block_size] for i in range(0, length, args.block_size)] for key, ids in joined.items()
    }


data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names).map(group_texts, batched=True)

training_args = DistillationArguments(  # changed
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
    temperature=2.0,  # changed: the distillation settings (per-token KD on the next token)
    alpha=0.5,
    beta=0.5,
    gamma=0.0,  # changed: no attention term for GPT-2 / Llama-style models (fused or rotary attention)
)
trainer = DistillationTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=data["train"],
    eval_dataset=data["validation"],
    processing_class=tokenizer,
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
)
trainer.train()
metrics = trainer.evaluate()
metrics["perplexity"] = math.exp(metrics["eval_loss"])
trainer.log_metrics("eval", metrics)
trainer.save_metrics("eval", metrics)  # eval_results.json
trainer.save_model()  # the student, plus distillation_config.json and training_history.json
