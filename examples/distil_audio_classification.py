"""Distil a keyword-spotting model: an ordinary audio-classification fine-tuning script with a few lines swapped.

    python examples/distil_audio_classification.py --teacher superb/wav2vec2-base-superb-ks \\
        --train_file train.jsonl --validation_file dev.jsonl --output_dir distilled-ks --num_layers 6

Data: JSON lines with `audio` (a WAV file path, relative to the working directory or to the data file) and `label`
(a name or an id of the teacher's labels). The WAV files are read with `hf_distill.audio` (Python's `wave` module and
an FFT resampler to the feature extractor's rate), since `datasets` 5 decodes its `Audio` feature with torchcodec;
where torchcodec is installed, `raw.cast_column("audio", Audio(sampling_rate=rate))` does the same.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForAudioClassification.from_pretrained("facebook/wav2vec2-base", num_labels=12, ...)
    +teacher = AutoModelForAudioClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)
    +model.config.layerdrop = 0.0

    -training_args = TrainingArguments(output_dir=..., learning_rate=3e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=3e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse
from pathlib import Path

import numpy as np
from datasets import Dataset, load_dataset
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed
from hf_distill.audio import AudioCollator, decode_audio_column

parser = argparse.ArgumentParser()
parser.add_argument(
    "--teacher", required=True, help="An audio classifier (path or Hub id) with its feature extractor."
)
parser.add_argument("--train_file", required=True, help="JSON lines with `audio` (WAV path) and `label`.")
parser.add_argument("--validation_file", required=True)
parser.add_argument("--output_dir", default="distilled-audio")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
parser.add_argument("--max_seconds", type=float, default=1.0, help="Clips are cut to this length.")
args = parser.parse_args()

raw = load_dataset("json", data_files={"train": args.train_file, "validation": args.validation_file})
feature_extractor = AutoFeatureExtractor.from_pretrained(args.teacher)
teacher = AutoModelForAudioClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers
model.config.layerdrop = 0.0  # changed: LayerDrop would skip the layers the attention and hidden-state terms compare
rate, label2id = feature_extractor.sampling_rate, teacher.config.label2id


def featurise(split: str, data_file: str):
    dataset = raw[split]
    waveforms = decode_audio_column(dataset, "audio", rate, Path(data_file).resolve().parent, split)
    waveforms = [w[: int(args.max_seconds * rate)] for w in waveforms]
    name = feature_extractor.model_input_names[0]  # input_values (wav2vec2, HuBERT) or input_features (Whisper)
    features = feature_extractor(waveforms, sampling_rate=rate)[name]
    labels = [label2id[v] if isinstance(v, str) else int(v) for v in dataset["label"]]
    return Dataset.from_dict({name: [np.asarray(f).tolist() for f in features], "labels": labels})


train, evaluation = featurise("train", args.train_file), featurise("validation", args.validation_file)


def compute_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=3e-5,
    per_device_train_batch_size=32,
    num_train_epochs=5,
    max_steps=args.max_steps,
    warmup_steps=100,
    eval_strategy="steps",
    eval_steps=200,
    logging_steps=20,
    logging_first_step=True,
    report_to="none",
    temperature=2.0,  # changed: the distillation settings (attention and hidden states over the real frames)
    alpha=0.5,
    beta=0.5,
    gamma=0.4,
    hidden_weight=0.5,
)
trainer = DistillationTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=train,
    eval_dataset=evaluation,
    processing_class=feature_extractor,
    data_collator=AudioCollator(feature_extractor),
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student and its feature extractor, plus distillation_config.json and training_history.json
