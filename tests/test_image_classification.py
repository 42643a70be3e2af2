"""Image classification (ViT, DeiT, ConvNeXt): detection, loss terms, attention maps, students, trainer, cache.

Tiny models built from configs (16x16 images, 4x4 patches), fixed seeds, CPU. References are written from the
definitions (Hinton's `T^2 KL`, cross-entropy, eager `output_attentions`), not from the code under test.
"""

import math

import pytest
import torch
from conftest import recorded_and_eager_maps
from datasets import Array3D, Dataset, Features, Value
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from hf_distill import DistillationArguments, DistillationTrainer, build_student
from hf_distill.image_data import AugmentedImages, random_resized_crop
from hf_distill.tasks import IMAGE_CLASSIFICATION, detect_task, output_terms

NUM_LABELS = 7  # > 5: top-5 accuracy is reported
VIT = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
           intermediate_size=64, num_labels=NUM_LABELS)  # fmt: skip


def vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**(VIT | overrides))).eval()


def deit(seed: int = 0, cls=DeiTForImageClassification):
    torch.manual_seed(seed)
    return cls(DeiTConfig(**VIT)).eval()


def convnext(seed: int = 0) -> ConvNextForImageClassification:
    torch.manual_seed(seed)
    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16,
                            num_labels=NUM_LABELS)  # fmt: skip
    return ConvNextForImageClassification(config).eval()


def image_rows(n: int = 16, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 16, 16, generator=generator)
    labels = torch.arange(n) % NUM_LABELS
    features = Features({"pixel_values": Array3D(shape=(3, 16, 16), dtype="float32"), "labels": Value("int64")})
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}, features=features)


def trainer_for(student, teacher, tmp_path, train=None, **settings) -> DistillationTrainer:
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        **({"max_steps": 3, "temperature": 2.0, "alpha": 0.5, "beta": 0.5, "gamma": 0.0} | settings),
    )  # fmt: skip
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train or image_rows())


# ---- the task -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [vit, deit, convnext, lambda: deit(cls=DeiTForImageClassificationWithTeacher)])
def test_every_image_head_is_detected(build):
    assert detect_task(build()) is IMAGE_CLASSIFICATION


def test_output_terms_are_hinton_kd_and_cross_entropy():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    temperature = 2.0
    p_t = [math.exp(v / temperature) for v in (0.0, 2.0, 0.0)]
    p_t = [p / sum(p_t) for p in p_t]
    log_s = [
        v / temperature - math.log(sum(math.exp(u / temperature) for u in (1.0, 0.0, -1.0))) for v in (1.0, 0.0, -1.0)
    ]
    kd = temperature**2 * sum(p * (math.log(p) - ls) for p, ls in zip(p_t, log_s))
    ce = -(0.0 - math.log(math.exp(1.0) + 1.0 + math.exp(-1.0)))  # label 1: -log softmax(s)[1]
    inputs = {"pixel_values": torch.zeros(1, 3, 16, 16), "labels": torch.tensor([1])}
    terms, objective = output_terms(IMAGE_CLASSIFICATION, (student,), (teacher,), inputs, temperature,
                                    {"loss_ce": 0.3, "loss_kd": 0.7})  # fmt: skip
    assert terms["loss_kd"][0].item() == pytest.approx(kd, rel=1e-5)
    assert terms["loss_ce"][0].item() == pytest.approx(ce, rel=1e-5)
    assert objective.item() == pytest.approx(0.3 * ce + 0.7 * kd, rel=1e-5)


def test_metrics_accuracy_and_top5():
    metrics = IMAGE_CLASSIFICATION.metrics(vit().config)
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0, 1]])
    labels = torch.tensor([0, 0, 6])  # row 0: top-1; row 1: class 0 ranks last (not top-5); row 2: top-1
    top = metrics.preprocess(logits, labels)
    assert top.shape == (3, 5)
    scores = metrics.compute(top.numpy(), labels.numpy())
    assert scores == {"accuracy": pytest.approx(2 / 3), "top5_accuracy": pytest.approx(2 / 3)}
    assert metrics.compute(top.numpy(), torch.tensor([2, 6, -100]).numpy()) == {"accuracy": 0.5, "top5_accuracy": 1.0}
    small = IMAGE_CLASSIFICATION.metrics(vit(num_labels=3).config)  # 3 classes: no top-5
    assert small.compute(small.preprocess(logits[:, :3], None).numpy(), torch.tensor([0, 2, 0]).numpy()) == {
        "accuracy": 1.0
    }


# ---- attention maps and students ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [vit, deit])
def test_recorded_attention_equals_eager_output_attentions(build):
    model = build()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    recorded, eager = recorded_and_eager_maps(model, [0, 2], pixel_values=pixels)
    tokens = 16 + (2 if isinstance(model, DeiTForImageClassification) else 1)  # patches + [CLS] (+ distillation)
    assert recorded[0].shape == (2, 4, tokens, tokens)
    torch.testing.assert_close(recorded[0], eager[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(recorded[1], eager[2], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("build", [vit, deit])
def test_build_student_with_every_layer_is_the_teacher(build):
    teacher = build()
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    student = build_student(teacher, num_layers=3)
    assert torch.equal(student(pixel_values=pixels).logits, teacher(pixel_values=pixels).logits)


def test_build_student_copies_embeddings_chosen_layers_norm_and_classifier():
    teacher = vit()
    student = build_student(teacher, num_layers=1)
    assert student.config.distillation_teacher_layers == [2] and student.config.num_hidden_layers == 1
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, value in s_state.items():  # every student weight is the teacher's (layer 0 <- teacher layer 2)
        assert torch.equal(value, t_state[name.replace("vit.layers.0.", "vit.layers.2.")]), name
    assert {n for n in s_state if ".layers." not in n} == {n for n in t_state if ".layers." not in n}
    assert {"vit.embeddings.patch_embeddings.projection.weight", "vit.layernorm.weight", "classifier.weight"} <= set(
        s_state
    )


# ---- the trainer ---------------------------------------------------------------------------------------------------


def test_vit_trains_with_every_term_logged(tmp_path):
    teacher = vit(seed=1)
    student = build_student(teacher, num_layers=1)
    torch.nn.init.normal_(student.classifier.weight)  # a student that differs from the teacher's last layer
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    trainer = trainer_for(student, teacher, tmp_path, gamma=1.0, hidden_weight=1.0, relation_weight=1.0)
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    for term in ("loss_ce", "loss_kd", "loss_attn", "loss_hidden", "loss_relation"):
        assert term in logged and math.isfinite(logged[term]) and logged[term] > 0, term
    assert any(not torch.equal(before[n], p) for n, p in student.named_parameters())
    assert all(torch.equal(teacher_before[n], p) for n, p in teacher.named_parameters())


def test_convnext_distils_its_logits_and_refuses_layer_terms(tmp_path):
    teacher, student = convnext(seed=1), convnext(seed=2)
    for setting in ({"gamma": 0.5}, {"hidden_weight": 1.0}, {"relation_weight": 1.0}):
        with pytest.raises(ValueError, match="ConvNextForImageClassification, has no attention layers") as error:
            trainer_for(student, teacher, tmp_path, **setting)
        name, value = next(iter(setting.items()))
        assert f"{name}={value}" in str(error.value) and f"{name}=0" in str(error.value)
        assert "recipe='logits'" in str(error.value)  # the recipe that needs only the logits
    trainer = trainer_for(student, teacher, tmp_path)
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    assert logged["loss_kd"] > 0 and logged["loss_ce"] > 0 and "loss_attn" not in logged


def test_deit_with_teacher_is_a_teacher_never_a_student(tmp_path):
    two_heads = deit(seed=1, cls=DeiTForImageClassificationWithTeacher)
    trainer = trainer_for(deit(seed=2), two_heads, tmp_path, max_steps=1)
    trainer.train()
    assert "loss_kd" in next(e for e in trainer.state.log_history if "loss" in e)
    with pytest.raises(ValueError, match="the student is a DeiTForImageClassificationWithTeacher.*"
                                         "AutoModelForImageClassification"):  # fmt: skip
        trainer_for(two_heads, deit(seed=1), tmp_path)


def test_task_mismatch_and_other_image_sizes_are_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=NUM_LABELS)  # fmt: skip
    text = BertForSequenceClassification(config)
    with pytest.raises(ValueError, match="both need the same task head.*AutoModelForSequenceClassification"):
        trainer_for(text, vit(), tmp_path)
    with pytest.raises(ValueError, match="the student has image_size=32 but the teacher image_size=16"):
        trainer_for(vit(image_size=32), vit(), tmp_path)


def test_labels_out_of_range_are_refused_before_training(tmp_path):
    rows = image_rows().map(lambda row, i: {"labels": 9 if i == 3 else row["labels"]}, with_indices=True)
    trainer = trainer_for(vit(seed=2), vit(seed=1), tmp_path, train=rows)
    with pytest.raises(ValueError, match=r"label values \[9\] outside the student's label set 0..6"):
        trainer.train()


def test_teacher_cache_holds_the_teachers_logits_row_for_row(tmp_path):
    teacher, rows = vit(seed=1), image_rows(10)
    trainer = trainer_for(vit(seed=2), teacher, tmp_path, train=rows, teacher_cache_dir=str(tmp_path / "cache"))
    cached = torch.as_tensor(trainer._cached_teacher_logits(rows)["teacher_logits"])
    with torch.no_grad():
        expected = teacher(pixel_values=torch.as_tensor(rows["pixel_values"])).logits
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)
    trainer.train()  # from the cache
    assert next(e for e in trainer.state.log_history if "loss" in e)["loss_kd"] > 0


# ---- augmentations ---------------------------------------------------------------------------------------------


def test_random_resized_crop_samples_a_box_and_resizes_it_back():
    image = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    torch.testing.assert_close(random_resized_crop(image, scale=(1.0, 1.0), ratio=(1.0, 1.0)), image)  # whole image
    torch.manual_seed(0)
    crop = random_resized_crop(image, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # a 4x4 box, upsampled 2x
    assert crop.shape == image.shape and not torch.equal(crop, image)
    assert image.min() <= crop.min() and crop.max() <= image.max()
    # bilinear upsampling of an arithmetic ramp stays a ramp of half the step inside the crop
    torch.testing.assert_close(crop[0, 3, 4] - crop[0, 3, 3], torch.tensor(0.5))


def test_augmented_images_change_the_training_rows_only():
    rows = image_rows(4).with_format("torch")
    flipped = AugmentedImages(rows, crop_scale=None, horizontal_flip=True)
    torch.manual_seed(0)
    seen = [flipped[0]["pixel_values"] for _ in range(20)]
    original = rows[0]["pixel_values"]
    assert any(torch.equal(s, original) for s in seen) and any(torch.equal(s, original.flip(-1)) for s in seen)
    assert all(torch.equal(s, original) or torch.equal(s, original.flip(-1)) for s in seen)
    assert torch.equal(rows[0]["pixel_values"], original) and flipped[0]["labels"] == rows[0]["labels"]
    assert flipped.describe() == {"images": {"random_resized_crop": None, "horizontal_flip": True}}
