"""DistillationArguments: HfArgumentParser round trips and a clear error for every invalid value."""

import json
import math

import pytest
import yaml
from conftest import tiny_bert
from transformers import HfArgumentParser, TrainingArguments

from hf_distill import DistillationArguments, DistillationTrainer

SETTINGS = {
    "output_dir": "run",
    "temperature": 2.5,
    "alpha": 0.2,
    "beta": 0.7,
    "gamma": 0.1,
    "attention_loss": "kl",
    "layer_map": [1, 3],
    "learning_rate": 3e-5,
    "num_train_epochs": 2.0,
    "report_to": "none",
}


def _check(args: DistillationArguments) -> None:
    for key in ("temperature", "alpha", "beta", "gamma", "attention_loss", "layer_map", "learning_rate"):
        assert getattr(args, key) == SETTINGS[key], key


def test_defaults_are_the_lab_notebook_settings():
    args = DistillationArguments(output_dir="run", report_to="none")
    assert (args.temperature, args.alpha, args.beta, args.gamma) == (4.0, 0.1, 0.5, 0.4)
    assert args.attention_loss == "mse" and args.layer_map is None


def test_command_line_round_trip():
    argv = []
    for key, value in SETTINGS.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    (args,) = HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(args=argv)
    _check(args)


def test_json_and_yaml_round_trip(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(SETTINGS))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(SETTINGS))
    parser = HfArgumentParser(DistillationArguments)
    _check(parser.parse_json_file(str(tmp_path / "run.json"))[0])
    _check(parser.parse_yaml_file(str(tmp_path / "run.yaml"))[0])


def test_help_text_for_every_distillation_field():
    help_text = HfArgumentParser(DistillationArguments).format_help()
    for flag in ("--temperature", "--alpha", "--beta", "--gamma", "--attention_loss", "--layer_map"):
        assert flag in help_text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", 0.0, "`temperature` must be > 0"),
        ("temperature", -1.0, "`temperature` must be > 0"),
        ("temperature", math.nan, "`temperature` must be a finite number"),
        ("temperature", math.inf, "`temperature` must be a finite number"),
        ("alpha", -0.1, "`alpha` must be a finite number >= 0"),
        ("beta", math.nan, "`beta` must be a finite number >= 0"),
        ("gamma", -1.0, "`gamma` must be a finite number >= 0"),
        ("attention_loss", "cosine", "`attention_loss` must be one of mse, kl"),
        ("layer_map", [1, -2], "`layer_map` must list one teacher layer index >= 0"),
        ("layer_map", [], "`layer_map` must list one teacher layer index >= 0"),
        ("layer_map", "1,3", "`layer_map` must be a list of integers"),
    ],
)
def test_invalid_values_name_the_argument(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        DistillationArguments(output_dir="run", report_to="none", **{field: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_all_weights_zero_is_refused():
    with pytest.raises(ValueError, match="all 0"):
        DistillationArguments(output_dir="run", report_to="none", alpha=0, beta=0, gamma=0)


def test_trainer_refuses_plain_training_arguments():
    with pytest.raises(TypeError, match="DistillationArguments"):
        DistillationTrainer(model=tiny_bert(2), teacher_model=tiny_bert(4), args=TrainingArguments("run"))


@pytest.mark.parametrize(
    "layer_map, message",
    [([1], r"`layer_map` \[1\] has 1 entries but the student has 2 layers"), ([1, 4], r"names teacher layers \[4\]")],
)
def test_trainer_checks_layer_map_against_the_models(layer_map, message):
    args = DistillationArguments(output_dir="run", report_to="none", layer_map=layer_map)
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=tiny_bert(2), teacher_model=tiny_bert(4), args=args)


def test_trainer_refuses_kl_attention_with_different_head_counts():
    args = DistillationArguments(output_dir="run", report_to="none", attention_loss="kl")
    with pytest.raises(ValueError, match="attention_loss='mse'"):
        DistillationTrainer(model=tiny_bert(2, heads=2), teacher_model=tiny_bert(4, heads=4), args=args)


def test_trainer_refuses_the_student_as_its_own_teacher():
    student = tiny_bert(2)
    with pytest.raises(ValueError, match="same object"):
        DistillationTrainer(model=student, teacher_model=student, args=DistillationArguments("run", report_to="none"))


def test_trainer_refuses_different_label_counts():
    with pytest.raises(ValueError, match="num_labels=3"):
        DistillationTrainer(
            model=tiny_bert(2), teacher_model=tiny_bert(4, num_labels=3),
            args=DistillationArguments("run", report_to="none"),
        )  # fmt: skip
