"""Images for the `hf-distill` command: an image column read, checked, and made into `pixel_values` once.

The image column is a `datasets` `Image` feature (Hub datasets, `imagefolder`) or file paths as strings (a CSV or
JSON of paths and labels; a relative path is read against the data file's folder, else the working directory). Each
image goes through the teacher's image processor (`AutoImageProcessor`, saved with the student), converted first to
the mode the model reads (`RGB` for 3 channels, `L` for 1), and is stored as a `(C, H, W)` float32 row: the
processing runs once, not every epoch. Optional augmentations of the training split, off by default, run on those
tensors with torch ops each time a row is read (`AugmentedImages`): a random resized crop (torchvision's
`RandomResizedCrop` sampling, bilinear resize back to the processor's size) and a horizontal flip. Augmented rows
change every epoch, so the teacher-output cache is refused with them.

Every check runs before any model is loaded: the column's type, missing files, labels out of the teacher's range,
and the processor's output against the teacher's `num_channels` and `image_size`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Array3D, ClassLabel, Dataset, Features, Image, Value

__all__ = ["AugmentedImages", "image_classification_data", "random_resized_crop"]

logger = logging.getLogger(__name__)

_IMAGE_COLUMN_GUESSES = ("image", "img", "image_path", "path", "file_name", "filename")
# ViT-style models with a fixed table of patch positions: another image size fails in their forward
_FIXED_SIZE_MODEL_TYPES = ("vit", "deit", "vit_msn", "beit", "data2vec-vision")
_WHAT = "the image processor ({}, from --tokenizer_name or else --teacher_model_name_or_path)"


# ---- augmentations (training split only) ---------------------------------------------------------------------------


def random_resized_crop(
    image: torch.Tensor, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """A random crop of `image` `(C, H, W)` covering a `scale` fraction of its area at aspect `ratio`, resized back
    to `(H, W)` bilinearly: torchvision's `RandomResizedCrop` sampling (10 tries, then the central crop)."""
    _, height, width = image.shape
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*scale).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            break
    else:  # the central crop at the nearest allowed aspect ratio
        aspect = width / height
        w, h = (round(height * ratio[0]), height) if aspect < ratio[0] else (width, height)
        w, h = (width, round(width / ratio[1])) if aspect > ratio[1] else (w, h)
        top, left = (height - h) // 2, (width - w) // 2
    crop = image[None, :, top : top + h, left : left + w]  # (1, C, h, w)
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]  # (C, H, W)


class AugmentedImages(torch.utils.data.Dataset):
    """A `pixel_values` dataset whose rows are augmented afresh each time they are read (the training split only).

    Random numbers come from torch's global generator, which `Trainer` seeds and restores on resume.

    Args:
        dataset (`datasets.Dataset`): rows with `pixel_values` `(C, H, W)` and `labels`, in torch format.
        crop_scale (`tuple[float, float]` or `None`): random resized crop over this fraction of the area; `None`: off.
        horizontal_flip (`bool`): flip left-right with probability 1/2.
    """

    def __init__(self, dataset: Dataset, crop_scale: tuple[float, float] | None, horizontal_flip: bool) -> None:
        self.dataset, self.crop_scale, self.horizontal_flip = dataset, crop_scale, horizontal_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.dataset[index])
        image = row["pixel_values"]  # (C, H, W)
        if self.crop_scale is not None:
            image = random_resized_crop(image, self.crop_scale)
        if self.horizontal_flip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
        row["pixel_values"] = image
        return row

    def describe(self) -> dict[str, Any]:
        """The augmentation settings, for `distillation_config.json` and the report."""
        crop = None if self.crop_scale is None else {"scale": list(self.crop_scale), "ratio": [3 / 4, 4 / 3]}
        return {"images": {"random_resized_crop": crop, "horizontal_flip": self.horizontal_flip}}


# ---- columns, files, labels ----------------------------------------------------------------------------------------


def _image_column(args, dataset: Dataset, split: str) -> str:
    columns = dataset.column_names
    name = args.image_column or next((c for c in _IMAGE_COLUMN_GUESSES if c in columns), None)
    if name is None or name not in columns:
        problem = f"--image_column={name!r} is not a column of" if args.image_column else "no image column in"
        raise ValueError(
            f"{problem} the {split} data; its columns are {columns}. Name the column of images (a datasets Image "
            f"feature, or image file paths) with --image_column (guessed: {', '.join(_IMAGE_COLUMN_GUESSES)})."
        )
    return name


def _data_folder(args, split: str) -> Path | None:
    path = args.train_file if split == "train" else args.validation_file
    return Path(path).resolve().parent if path else None


def _as_images(dataset: Dataset, column: str, args, split: str) -> Dataset:
    """`dataset` with `column` an `Image` feature: file paths are checked to exist and resolved first."""
    feature = dataset.features[column]
    if isinstance(feature, Image):
        return dataset
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(
            f"--image_column={column!r} is a {feature} column of the {split} data, not images. Give a column of "
            "images: a datasets Image feature, or image file paths (strings)."
        )
    folder, resolved, missing = _data_folder(args, split), [], []
    for value in dataset[column]:
        path = Path(value or "")
        candidates = [path] if path.is_absolute() else [c for c in ((folder / path) if folder else None, path) if c]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(value)
        resolved.append(str(found.resolve()) if found else "")
    if missing:
        where = f" (relative paths are read against {folder}, then the working directory)" if folder else ""
        raise ValueError(
            f"--image_column={column!r} of the {split} data names {len(missing)} file(s) that do not exist{where}, "
            f"e.g. {missing[0]!r}. Give a column of image file paths (or a datasets Image feature) and check them."
        )
    return dataset.remove_columns(column).add_column(column, resolved).cast_column(column, Image())


def _label_ids(dataset: Dataset, args, config, split: str) -> tuple[str, list[int]]:
    from .data import encode_labels

    label = args.label_column or "label"
    if label not in dataset.column_names:
        raise ValueError(f"--label_column={label!r} is not a column of the {split} data; its columns are "
                         f"{dataset.column_names}. Name the labels with --label_column.")  # fmt: skip
    values = dataset[label]
    feature = dataset.features[label]
    known = set(config.label2id) if getattr(config, "label2id", None) else set()
    if isinstance(feature, ClassLabel) and known and set(feature.names) <= known:
        values = [feature.int2str(v) for v in values]  # the dataset's class ids, as names: mapped by the teacher
    try:
        return label, encode_labels(values, config, split, require_all=split == "train")
    except ValueError as error:
        raise ValueError(f"--label_column={label!r}: {error}") from error


# ---- the image processor against the model -------------------------------------------------------------------------


def _mode(config) -> str | None:
    return {3: "RGB", 1: "L"}.get(getattr(config, "num_channels", 3))


def _check_processed(shape: tuple[int, ...], processor, config) -> None:
    """Refuse pixel values the teacher cannot read: other channels, or another size for a fixed-size ViT."""
    what = _WHAT.format(type(processor).__name__)
    channels, height, width = shape
    expected = getattr(config, "num_channels", None)
    if expected is not None and channels != expected:
        raise ValueError(
            f"{what} makes {channels}-channel images but the teacher has num_channels={expected}: it is not the "
            f"teacher's processor. Save the teacher's image processor (image_mean/image_std with {expected} values) "
            "beside it, or pass it with --tokenizer_name."
        )
    size = getattr(config, "image_size", None)
    if size is None:
        return
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if (height, width) != size:
        message = (
            f"{what} makes {height}x{width} images but the teacher has image_size={size[0]}x{size[1]}. Use the "
            f"teacher's image processor, or one with size={{'height': {size[0]}, 'width': {size[1]}}}."
        )
        if getattr(config, "model_type", None) in _FIXED_SIZE_MODEL_TYPES:
            raise ValueError(message)
        logger.warning(message)


def _pixel_values(dataset: Dataset, column: str, labels: list[int], processor, config, split: str) -> Dataset:
    mode = _mode(config)

    def convert(images: list) -> list:
        return [image.convert(mode) if mode and image.mode != mode else image for image in images]

    try:
        first = processor(images=convert([dataset[0][column]]), return_tensors="np")["pixel_values"][0]
    except (ValueError, TypeError) as error:  # e.g. 1-channel mean/std for the 3-channel images the teacher reads
        raise ValueError(
            f"{_WHAT.format(type(processor).__name__)} fails on the first {split} image, made {mode or 'as stored'} "
            f"for the teacher's num_channels={getattr(config, 'num_channels', None)} ({error}): it is not the "
            "teacher's processor. Save the teacher's image processor beside it, or pass it with --tokenizer_name."
        ) from error
    _check_processed(tuple(first.shape), processor, config)
    features = Features({"pixel_values": Array3D(shape=tuple(first.shape), dtype="float32")})

    def process(batch: dict) -> dict:
        return {"pixel_values": processor(images=convert(batch[column]), return_tensors="np")["pixel_values"]}

    processed = dataset.select_columns([column]).map(
        process, batched=True, batch_size=64, remove_columns=[column], features=features,
        desc=f"Processing {split} images",
    )  # fmt: skip
    return processed.add_column("labels", labels).with_format("torch")


# ---- the task's data -----------------------------------------------------------------------------------------------


def image_classification_data(splits: dict[str, Dataset], args, processor, config):
    """The `TaskData` of image classification: checked, processed splits, `default_data_collator` batches."""
    from transformers import default_data_collator

    from .task_data import TaskData, _limited, _refuse

    _refuse(args, "image-classification", ("text_column", "text_pair_column"))
    if not hasattr(processor, "preprocess") or hasattr(processor, "convert_tokens_to_ids"):
        raise ValueError(
            f"image classification needs the teacher's image processor, got a {type(processor).__name__}. Save it "
            "beside the teacher (image_processor.save_pretrained) or pass its folder with --tokenizer_name."
        )
    checked = {}
    for split, dataset in splits.items():
        column = _image_column(args, dataset, split)
        dataset = _as_images(dataset, column, args, split)
        label, labels = _label_ids(dataset, args, config, split)
        dataset, labels = _limited(dataset, labels, args, split)
        checked[split] = (dataset, column, labels)
    processed = {split: _pixel_values(d, column, labels, processor, config, split)
                 for split, (d, column, labels) in checked.items()}  # fmt: skip
    train, augmentation = processed["train"], None
    crop = (args.crop_min_scale, 1.0) if args.random_resized_crop else None
    if crop is not None or args.horizontal_flip:
        train = AugmentedImages(train, crop, args.horizontal_flip)
        augmentation = train.describe()
    columns = {"image_column": column, "label_column": label}
    uncacheable = "--random_resized_crop / --horizontal_flip change the training images every epoch"
    return TaskData(train, processed["validation"], default_data_collator, columns, augmentation=augmentation,
                    uncacheable=uncacheable if augmentation else None)  # fmt: skip
