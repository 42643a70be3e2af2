"""Distil an image classifier (ViT, DeiT): an ordinary image-classification script with a few lines swapped.

    python examples/distil_image_classification.py --teacher nateraw/vit-base-beans \\
        --dataset_name AI-Lab-Makerere/beans --output_dir distilled-beans
    python examples/distil_image_classification.py --teacher path/to/vit-teacher \\
        --train_dir images/train --validation_dir images/val --num_layers 6 --max_steps 2000

Data: a Hub dataset with an `image` column and a `labels`/`label` column, or local folders laid out as
`imagefolder` wants them (one sub-folder per class, named as the teacher's labels). Images go through the teacher's
image processor; training images are flipped left-right half of the time (with torch, no torchvision needed).
Class names are mapped to the *teacher's* label ids, so class i means the same thing to teacher, student and data.

What changed against the plain fine-tuning script (lines marked `# changed` below):

    -from transformers import Trainer, TrainingArguments
    +from hf_distill import DistillationArguments, DistillationTrainer, build_student

    -model = AutoModelForImageClassification.from_pretrained("google/vit-base-patch16-224-in21k", num_labels=...)
    +teacher = AutoModelForImageClassification.from_pretrained(args.teacher)
    +model = build_student(teacher, num_layers=6)

    -training_args = TrainingArguments(output_dir=..., learning_rate=5e-5, ...)
    +training_args = DistillationArguments(output_dir=..., learning_rate=5e-5, ..., temperature=2.0, alpha=0.5, ...)

    -trainer = Trainer(model=model, args=training_args, ...)
    +trainer = DistillationTrainer(model=model, teacher_model=teacher, args=training_args, ...)
"""

import argparse

import numpy as np
import torch
from datasets import ClassLabel, load_dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_distill import DistillationArguments, DistillationTrainer, build_student  # changed

parser = argparse.ArgumentParser()
parser.add_argument("--teacher", required=True, help="An image classifier (path or Hub id), e.g. a fine-tuned ViT.")
parser.add_argument("--dataset_name", default="AI-Lab-Makerere/beans", help="Hub dataset, used without --train_dir.")
parser.add_argument("--train_dir", help="Local folder with one sub-folder of images per class.")
parser.add_argument("--validation_dir", help="The same layout, for evaluation.")
parser.add_argument("--output_dir", default="distilled-image-classifier")
parser.add_argument("--num_layers", type=int, default=6)
parser.add_argument("--max_steps", type=int, default=-1)
parser.add_argument("--gamma", type=float, default=0.4, help="Attention-map term (ViT/DeiT); 0 for ConvNeXt/Swin.")
args = parser.parse_args()

if args.train_dir:
    raw = load_dataset("imagefolder", data_files={"train": f"{args.train_dir}/**", "validation":
                                                  f"{args.validation_dir}/**"})  # fmt: skip
else:
    raw = load_dataset(args.dataset_name)

image_processor = AutoImageProcessor.from_pretrained(args.teacher)
teacher = AutoModelForImageClassification.from_pretrained(args.teacher)  # changed
model = build_student(teacher, num_layers=args.num_layers)  # changed: the student starts from teacher layers
label_column = "labels" if "labels" in raw["train"].column_names else "label"
feature = raw["train"].features[label_column]
label2id = teacher.config.label2id


def label_id(label):
    """The teacher's id for a dataset class (by name when the dataset names its classes)."""
    return label2id[feature.int2str(label)] if isinstance(feature, ClassLabel) else int(label)


def transform(batch, train: bool):
    images = [image.convert("RGB") for image in batch["image"]]
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]  # (B, C, H, W)
    if train:  # flip half of the training images left-right
        flip = torch.rand(len(images)) < 0.5
        pixel_values[flip] = pixel_values[flip].flip(-1)
    return {"pixel_values": pixel_values, "labels": [label_id(label) for label in batch[label_column]]}


train_data = raw["train"].with_transform(lambda batch: transform(batch, train=True))
eval_data = raw["validation"].with_transform(lambda batch: transform(batch, train=False))


def collate(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}  # fmt: skip


def compute_metrics(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


training_args = DistillationArguments(  # changed
    output_dir=args.output_dir,
    learning_rate=5e-5,
    per_device_train_batch_size=32,
    num_train_epochs=5,
    max_steps=args.max_steps,
    warmup_steps=50,
    weight_decay=0.01,
    eval_strategy="steps",
    eval_steps=200,
    logging_steps=20,
    logging_first_step=True,
    remove_unused_columns=False,  # the transform needs the image column
    report_to="none",
    temperature=2.0,  # changed: the distillation settings (Hinton KD + CE, attention maps of mapped layers)
    alpha=0.5,
    beta=0.5,
    gamma=args.gamma,
)
trainer = DistillationTrainer(  # changed
    model=model,
    teacher_model=teacher,  # changed
    args=training_args,
    train_dataset=train_data,
    eval_dataset=eval_data,
    processing_class=image_processor,
    data_collator=collate,
    compute_metrics=compute_metrics,
)
trainer.train()
print(trainer.evaluate())
trainer.save_model()  # the student and its image processor, plus distillation_config.json and training_history.json
