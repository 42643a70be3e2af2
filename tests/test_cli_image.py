"""`hf-distill` on images, end to end on real data that ships offline: scikit-learn's bundled `load_digits`.

The 8x8 digits are written as PNG files with a CSV of paths and labels; a tiny ViT teacher (built from a config,
8x8 inputs in four 4x4 patches) is trained here for a few steps, then distilled into a 1-layer student through the
command. Accuracy is recomputed here from the PNG files, one image at a time, independently of the command.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import run_cli, to_argv
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTConfig, ViTForImageClassification
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from hf_distill import load_distillation_config, load_training_history

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread

N_TRAIN, N_DEV = 240, 60
TERMS = ("loss_ce", "loss_kd", "loss_attn")


def processor(**overrides) -> ViTImageProcessorPil:
    return ViTImageProcessorPil(**({"size": {"height": 8, "width": 8}, "image_mean": [0.5] * 3,
                                    "image_std": [0.5] * 3} | overrides))  # fmt: skip


def write_split(root: Path, name: str, images, labels) -> Path:
    folder = root / "images"
    folder.mkdir(exist_ok=True)
    with (root / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for i, (pixels, label) in enumerate(zip(images, labels)):
            path = folder / f"{name}-{i:04d}.png"
            Image.fromarray((pixels * 255 / 16).astype("uint8"), mode="L").save(path)
            writer.writerow([f"images/{path.name}", int(label)])  # relative to the CSV's folder
    return root / f"{name}.csv"


def pixel_values(paths: list[Path], image_processor) -> torch.Tensor:
    images = [Image.open(p).convert("RGB") for p in paths]
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    root = tmp_path_factory.mktemp("digits")
    train = write_split(root, "train", data.images[:N_TRAIN], data.target[:N_TRAIN])
    dev = write_split(root, "dev", data.images[N_TRAIN : N_TRAIN + N_DEV], data.target[N_TRAIN : N_TRAIN + N_DEV])
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})  # fmt: skip
    teacher = ViTForImageClassification(config)
    inputs = pixel_values(sorted((root / "images").glob("train-*.png")), processor())
    labels = torch.as_tensor(data.target[:N_TRAIN])
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
    teacher.train()
    for step in range(80):  # a few steps of plain fine-tuning: a teacher that knows digits, far from perfect
        batch = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(step))[:48]
        loss = teacher(pixel_values=inputs[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    teacher_dir = root / "teacher"
    teacher.save_pretrained(teacher_dir)
    processor().save_pretrained(teacher_dir)
    return {"root": root, "train": train, "dev": dev, "teacher": teacher_dir}


def options(digits, out: Path, **overrides) -> list[str]:
    settings = {
        "teacher_model_name_or_path": digits["teacher"], "student_num_layers": 1, "train_file": digits["train"],
        "validation_file": digits["dev"], "output_dir": out, "max_steps": 6, "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32, "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 6,
        "save_strategy": "steps", "save_steps": 6, "latency_samples": 1, "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "seed": 0, "learning_rate": 2e-3, "alpha": 0.5, "beta": 0.5, "gamma": 1.0,
    } | overrides  # fmt: skip
    return to_argv({k: v for k, v in settings.items() if v is not None})


def reference_accuracy(model_dir: Path, csv_file: Path) -> float:
    """Accuracy computed here: each PNG through the saved processor and model, one at a time."""
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    rows = list(csv.DictReader(csv_file.open()))
    correct = 0
    for row in rows:
        with torch.no_grad():
            logits = model(pixel_values=pixel_values([csv_file.parent / row["image"]], image_processor)).logits
        correct += int(logits.argmax(-1).item() == int(row["label"]))
    return correct / len(rows)


def test_digits_end_to_end(digits, tmp_path, capsys):
    out = tmp_path / "out"  # no --task: read from the teacher's ViTForImageClassification
    code, err = run_cli(options(digits, out), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "image-classification" and report["metric"] == "accuracy"
    assert report["data"]["image_column"] == "image" and report["data"]["num_train"] == N_TRAIN
    for row in ("teacher", "student_before", "student_after"):
        assert set(report["evaluation"][row]["metrics"]) == {"accuracy", "top5_accuracy"}, row
    teacher_accuracy = report["evaluation"]["teacher"]["metrics"]["accuracy"]
    assert teacher_accuracy > 0.5  # the teacher learned digits (chance: 0.1)
    assert teacher_accuracy == pytest.approx(reference_accuracy(digits["teacher"], digits["dev"]))
    assert report["evaluation"]["student_after"]["metrics"]["accuracy"] == pytest.approx(
        reference_accuracy(out, digits["dev"])
    )
    history = load_training_history(out)
    for term in TERMS:  # per-term losses logged
        assert all(term in entry for entry in history["train"]), term
    assert history["eval"][-1]["eval_accuracy"] == pytest.approx(
        report["evaluation"]["student_after"]["metrics"]["accuracy"]
    )
    for folder in (out, out / "checkpoint-6"):  # the record beside the model and beside the checkpoint
        record = load_distillation_config(folder)
        assert record.task == "image-classification" and record.student_num_layers == 1 and record.gamma == 1.0
        assert (folder / "preprocessor_config.json").is_file()  # the teacher's image processor, with the student
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "AutoImageProcessor.from_pretrained" in card


def test_augmentations_are_recorded_and_refuse_the_cache(digits, tmp_path, capsys):
    settings = dict(random_resized_crop="true", crop_min_scale=0.5, max_steps=2, eval_strategy="no",
                    save_strategy="no", gamma=0.0, recipe="logits")  # fmt: skip
    code, err = run_cli(options(digits, tmp_path / "a", **settings), capsys)
    assert code == 0, err
    record = load_distillation_config(tmp_path / "a")
    assert record.augmentation == {"images": {"random_resized_crop": {"scale": [0.5, 1.0], "ratio": [0.75, 4 / 3]},
                                              "horizontal_flip": False}}  # fmt: skip
    code, err = run_cli(options(digits, tmp_path / "b", teacher_cache_dir=tmp_path / "cache", **settings), capsys)
    assert code == 2 and "--teacher_cache_dir=" in err and "--random_resized_crop" in err, err


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("task", "--task='sequence-classification', but the teacher is a ViTForImageClassification"),
    ("column", "--image_column='label' is a Value('int64')"),
    ("not_files", "--image_column='image' of the train data names 2 file(s) that do not exist"),
    ("channels", "fails on the first train image, made RGB for the teacher's num_channels=3"),
    ("size", "makes 32x32 images but the teacher has image_size=8x8"),
    ("labels", "--label_column='label': the train labels include [12]"),
])  # fmt: skip
def test_bad_input_is_refused_before_training(digits, tmp_path, capsys, case, expected):
    overrides = {}
    if case == "task":
        overrides["task"] = "sequence-classification"
    elif case == "column":
        overrides["image_column"] = "label"
    elif case == "not_files":
        rows = [{"image": "a fine film", "label": 0}, {"image": "a dull one", "label": 1}]
        overrides["train_file"] = write_csv(tmp_path / "text.csv", rows)
    elif case in ("channels", "size"):
        folder = tmp_path / "processor"
        wrong = {"channels": {"image_mean": [0.5], "image_std": [0.5]}, "size": {"size": {"height": 32, "width": 32}}}
        processor(**wrong[case]).save_pretrained(folder)
        overrides["tokenizer_name"] = folder
    else:
        rows = list(csv.DictReader(digits["train"].open()))
        rows[3]["label"] = 12
        for row in rows:
            row["image"] = str(digits["root"] / row["image"])  # absolute paths: the CSV is elsewhere
        overrides["train_file"] = write_csv(tmp_path / "labels.csv", rows)
    code, err = run_cli(options(digits, tmp_path / "o", **overrides), capsys)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "o" / "report.json").exists()


def test_resume_with_the_teacher_cache(digits, tmp_path, capsys):
    """A run stopped at step 2 resumes to step 4 from its checkpoint; the teacher's logits come from the cache."""
    cache = tmp_path / "cache"
    common = dict(gamma=0.0, recipe="logits", teacher_cache_dir=cache, save_steps=2, eval_strategy="no",
                  logging_steps=1)  # fmt: skip
    code, err = run_cli(options(digits, tmp_path / "o", max_steps=2, **common), capsys)
    assert code == 0, err
    assert len(list(cache.iterdir())) == 1  # one cached table, for this teacher and these images
    code, err = run_cli(options(digits, tmp_path / "o", max_steps=4, **common), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["training"]["resumed_from"].endswith("checkpoint-2") and report["training"]["global_step"] == 4
    assert [e["step"] for e in load_training_history(tmp_path / "o")["train"]] == [1, 2, 3, 4]
    assert len(list(cache.iterdir())) == 1
