"""examples/distil_image_classification.py runs end to end on a tiny ViT and an `imagefolder` of digits PNGs."""

import pytest
import torch
from PIL import Image
from test_task_examples import STUDENT_LAYERS, TEACHER_LAYERS, check_student, run_example
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil


def write_image_folder(root, images, labels) -> None:
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))  # one sub-folder per class, named as the teacher's labels
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype("uint8"), mode="L").save(folder / f"{i:04d}.png")


def test_image_classification_example(tmp_path):
    data = pytest.importorskip("sklearn.datasets").load_digits()
    write_image_folder(tmp_path / "train", data.images[:40], data.target[:40])
    write_image_folder(tmp_path / "val", data.images[40:60], data.target[40:60])
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=TEACHER_LAYERS,
                       num_attention_heads=4, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})  # fmt: skip
    teacher = tmp_path / "teacher"
    ViTForImageClassification(config).save_pretrained(teacher)
    ViTImageProcessorPil(size={"height": 8, "width": 8}).save_pretrained(teacher)
    out = run_example("distil_image_classification.py", tmp_path, "--teacher", str(teacher), "--train_dir",
                      str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"))  # fmt: skip
    history = check_student(out, "AutoModelForImageClassification")
    assert all("loss_attn" in entry for entry in history["train"])  # gamma=0.4: ViT attention maps distilled
    assert 0 <= history["eval"][-1]["eval_accuracy"] <= 1 and STUDENT_LAYERS < TEACHER_LAYERS
    assert (out / "preprocessor_config.json").is_file()
