"""The examples stay runnable: the recipe configs parse to the recipe, the minimal script trains and saves."""

import runpy
import sys
from pathlib import Path

import datasets
import pytest
from test_cli import SST2, assets  # noqa: F401  (fixtures)

from hf_distill import load_distillation_config
from hf_distill.command.cli import parse_args

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def check_recipe(model, data, run, training):
    assert training.student_num_layers == 6 and model.student_model_name_or_path is None
    assert (training.temperature, training.alpha, training.beta, training.gamma) == (4.0, 0.05, 0.45, 0.4)
    assert training.attention_loss == "mse" and training.layer_map is None  # default: [1, 3, 5, 7, 9, 11]
    # the notebook's recipe, not the command's default: no term the notebook did not have
    assert training.recipe == "seed" and training.relation_weight == 0 and training.hidden_weight == 0
    assert training.learning_rate == 2e-5 and training.per_device_train_batch_size == 32
    assert training.num_train_epochs == 3 and training.warmup_steps == 500 and training.weight_decay == 0.01
    assert training.max_grad_norm == 1.0 and training.eval_strategy == "steps" and training.eval_steps == 500
    assert data.text_column == "sentence" and data.label_column == "label" and not run.overwrite_output_dir


def test_classic_recipe_config():
    model, data, run, training = parse_args([str(EXAMPLES / "sst2_recipe.yaml")])
    check_recipe(model, data, run, training)
    assert data.dataset_name == "nyu-mll/glue" and data.dataset_config_name == "sst2"


@pytest.mark.skipif(not SST2.is_dir(), reason=f"GLUE SST-2 TSVs not found at {SST2} (shared data absent)")
def test_local_tsv_recipe_config(monkeypatch):
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository root, as its command says
    model, data, run, training = parse_args([str(EXAMPLES / "sst2_local_tsv.yaml")])
    check_recipe(model, data, run, training)
    assert data.train_file.endswith("sst2/train.tsv") and data.validation_file.endswith("sst2/validation.tsv")


def test_minimal_trainer_swap_script_trains_and_saves(assets, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "minimal_trainer_swap.py", "--teacher", assets["teacher"], "--train_file", assets["train"],
        "--validation_file", assets["dev"], "--output_dir", str(out), "--num_layers", "2", "--max_steps", "2",
    ])  # fmt: skip
    runpy.run_path(str(EXAMPLES / "minimal_trainer_swap.py"), run_name="__main__")
    record = load_distillation_config(out)
    assert record.student_layers_from_teacher == [1, 3] and record.global_step == 2
    assert (record.temperature, record.alpha, record.beta, record.gamma) == (4.0, 0.05, 0.45, 0.4)
    assert (out / "model.safetensors").is_file()


def test_every_option_is_documented():
    from dataclasses import fields

    from transformers import TrainingArguments

    from hf_distill import DistillationArguments
    from hf_distill.command.cli import ModelArguments, RunArguments
    from hf_distill.data import DataArguments

    text = (ROOT / "docs" / "arguments.md").read_text()
    inherited = {f.name for f in fields(TrainingArguments)}
    for cls in (ModelArguments, DataArguments, RunArguments, DistillationArguments):
        for field in fields(cls):
            if field.name not in inherited:
                assert f"`{field.name}`" in text or f"`--{field.name}`" in text, f"{cls.__name__}.{field.name}"
