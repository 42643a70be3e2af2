"""The model card: valid Hub metadata and a body whose numbers are the run's own."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset, DatasetInfo
from huggingface_hub import ModelCard

from hf_distill import DistillationArguments, DistillationRecord, DistillationTrainer, load_distillation_config
from hf_distill.card import CardDataset, build_model_card, load_report
from hf_distill.results import DistillationResults, load_results, write_results


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def _run(output_dir, eval_dataset=None, **overrides):
    """A 4-step distillation of a 4-layer tiny BERT (named like a Hub model) into a 2-layer one, saved."""
    teacher, student = tiny_bert(num_layers=4, seed=1), tiny_bert(num_layers=2, seed=2)
    teacher.config._name_or_path = "org/tiny-teacher"
    settings = dict(temperature=2.5, alpha=0.2, beta=0.7, gamma=0.3, learning_rate=3e-4, seed=7, max_steps=4)
    args = DistillationArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **(settings | overrides),
    )
    train = Dataset.from_dict(random_rows(32, seed=3))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset if eval_dataset is not None else train,
        data_collator=pad_collator,
        compute_metrics=_accuracy,
    )
    trainer.train()
    trainer.save_model()
    return trainer


def test_card_metadata_and_body_carry_the_run_values(tmp_path):
    trainer = _run(tmp_path / "student")
    out = tmp_path / "student"
    card = ModelCard.load(out / "README.md")
    record = load_distillation_config(out)
    last_eval = [e for e in trainer.state.log_history if "eval_accuracy" in e][-1]

    data = card.data
    assert data.library_name == "transformers"
    assert data.base_model == "org/tiny-teacher"
    assert {"hf-distill", "knowledge-distillation", "distillation"} <= set(data.tags)
    assert data.pipeline_tag == "text-classification"
    assert data.metrics == ["accuracy"]
    assert data.eval_results is None  # no Hub dataset is known for an in-memory dataset: the Hub would reject it
    assert "not recorded" in card.text

    # Numbers in the body are the run's: settings passed above, parameter counts counted here independently.
    teacher_params = sum(p.numel() for p in trainer.teacher_model.parameters())
    student_params = sum(p.numel() for p in trainer.model.parameters())
    assert (record.teacher_num_parameters, record.student_num_parameters) == (teacher_params, student_params)
    assert f"| Parameters | {teacher_params:,} | {student_params:,} |" in card.text
    assert f"{teacher_params / student_params:.2f}x fewer" in card.text
    assert "= 0.2 * CE + 0.7 * 2.5^2 * KL(softmax(t/2.5) || softmax(s/2.5)) + 0.3 * L_attn[mse]" in card.text
    assert "| 0 | n/a | 1 |\n| 1 | n/a | 3 |" in card.text  # default 4 -> 2 layer map [1, 3]
    for line in ("- learning_rate: 0.0003", "- seed: 7", "- max_steps: 4", f"- global_step: {record.global_step}"):
        assert line in card.text
    assert f"- accuracy: {last_eval['eval_accuracy']:.4g}" in card.text
    assert "@article{hinton2015distilling" in card.text and "@inproceedings{wang2020minilm" in card.text
    assert f'AutoModelForSequenceClassification.from_pretrained("{out}")' in card.text


def test_card_model_index_from_dataset_info_and_from_create_model_card(tmp_path):
    info = DatasetInfo(dataset_name="sst2", config_name="plain_text")
    eval_set = Dataset.from_dict(random_rows(16, seed=4), info=info, split="validation")
    trainer = _run(tmp_path / "student", eval_dataset=eval_set, max_steps=2)
    accuracy = [e for e in trainer.state.log_history if "eval_accuracy" in e][-1]["eval_accuracy"]

    (result,) = ModelCard.load(tmp_path / "student" / "README.md").data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split) == (
        "text-classification",
        "sst2",
        "plain_text",
        "validation",
    )
    assert (result.metric_type, result.metric_value) == ("accuracy", accuracy)

    # Explicit Trainer-style arguments win, and later saves keep them.
    trainer.create_model_card(dataset_tags="stanfordnlp/sst2", dataset="SST-2", license="apache-2.0", tags=["x"])
    trainer.save_model()
    data = ModelCard.load(tmp_path / "student" / "README.md").data
    assert data.datasets == ["stanfordnlp/sst2"] and data.license == "apache-2.0" and "x" in data.tags
    assert data.eval_results[0].dataset_type == "stanfordnlp/sst2" and data.eval_results[0].dataset_name == "SST-2"


def _record(**overrides) -> DistillationRecord:
    values = dict(
        teacher_model="org/teacher",
        teacher_architecture="BertForSequenceClassification",
        student_architecture="BertForSequenceClassification",
        teacher_num_parameters=1000,
        student_num_parameters=400,
        teacher_num_layers=4,
        student_num_layers=2,
        compression_ratio=2.5,
        temperature=4.0,
        alpha=0.1,
        beta=0.5,
        gamma=0.4,
        attention_loss="kl",
        layer_map=[1, 3],
    )
    return DistillationRecord(**(values | overrides))


def test_card_reads_the_report(tmp_path):
    report = {
        "teacher": {"eval_accuracy": 0.9, "f1": 0.88},
        "student_before": {"accuracy": 0.6},
        "student_after": {"accuracy": 0.84, "f1": 0.8},
        "speedup": 2.0,
        "latency": {"batch_size": 32, "device": "cpu"},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    card = build_model_card(
        _record(student_layers_from_teacher=[0, 3]),
        model_name="tiny",
        load_path="me/tiny",
        on_hub=True,
        eval_metrics={"accuracy": 0.5},  # the report's post-distillation numbers take precedence
        report=load_report(tmp_path),
        datasets=[CardDataset("glue", "GLUE", "sst2", "validation")],
    )
    parsed = ModelCard(str(card))
    assert parsed.data.base_model == "org/teacher"  # the teacher is a Hub id
    assert {(r.metric_type, r.metric_value) for r in parsed.data.eval_results} == {("accuracy", 0.84), ("f1", 0.8)}
    assert "| Teacher | 0.9 | 0.88 |" in card.text
    assert "| Student before distillation | 0.6 | n/a |" in card.text
    assert "keeps 93.3 % of the teacher's accuracy" in card.text  # 0.84 / 0.9
    assert "closed 80.0 % of the accuracy gap" in card.text  # (0.84 - 0.6) / (0.9 - 0.6)
    assert "**2.00x** (batch_size: 32, device: cpu)" in card.text
    assert "| 1 | 3 | 3 |" in card.text and "teacher layers [0, 3]" in card.text
    assert "per-head KL" in card.text
    assert 'hf_hub_download("me/tiny", "distillation_config.json")' in card.text


def test_card_takes_the_results_file_the_library_defines(tmp_path):
    results = DistillationResults(metric="f1", teacher={"f1": 0.8, "accuracy": 0.9}, student_before={"f1": 0.4},
                                  student_after={"f1": 0.7}, speedup=3.0, latency={"device": "cpu"})  # fmt: skip
    write_results(tmp_path, results)
    (tmp_path / "report.json").write_text(json.dumps({"student_after": {"f1": 0.1}}))  # ignored: the file wins
    assert load_results(tmp_path) == results
    card = build_model_card(_record(), model_name="tiny", load_path="out", results=load_results(tmp_path))
    assert "keeps 87.5 % of the teacher's f1" in card.text  # 0.7 / 0.8, on the named primary metric
    assert "closed 75.0 % of the f1 gap" in card.text  # (0.7 - 0.4) / (0.8 - 0.4)
    assert "**3.00x** (device: cpu)" in card.text
    assert card.text == build_model_card(_record(), model_name="tiny", load_path="out", report=results.to_dict()).text


def test_an_older_folder_with_only_the_commands_report_json_still_renders(tmp_path):
    report = {  # the hf-distill command's report.json layout, from before distillation_results.json
        "metric": "accuracy",
        "evaluation": {
            "teacher": {"metrics": {"accuracy": 0.9}, "throughput": {"examples_per_second": 10.0}},
            "student_before": {"metrics": {"accuracy": 0.5}},
            "student_after": {"metrics": {"accuracy": 0.8}},
        },
        "speed": {"device": "cpu", "batch_size": 32, "latency_samples": 8, "latency_speedup": 2.5},
        "files": {"report.json": "this comparison"},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    latency = {"device": "cpu", "batch_size": 32, "latency_samples": 8}
    assert load_results(tmp_path) == DistillationResults(
        metric="accuracy", teacher={"accuracy": 0.9}, student_before={"accuracy": 0.5},
        student_after={"accuracy": 0.8}, speedup=2.5, latency=latency,
    )  # fmt: skip
    card = build_model_card(_record(), model_name="tiny", load_path="out", results=load_results(tmp_path))
    assert "| Student after distillation (this model) | 0.8 |" in card.text
    assert "closed 75.0 % of the accuracy gap" in card.text  # (0.8 - 0.5) / (0.9 - 0.5)
    assert "**2.50x** (device: cpu, batch_size: 32, latency_samples: 8)" in card.text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_report_is_ignored_with_a_warning(tmp_path, caplog, content):
    (tmp_path / "report.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="hf_distill.card"):
        assert load_report(tmp_path) == {}
    assert "report.json" in caplog.text


def test_malformed_report_values_are_skipped():
    report = {"teacher": "high", "student_after": {"accuracy": "0.8", "ok": True}, "speedup": "fast"}
    card = build_model_card(_record(), model_name="tiny", load_path="out", report=report)
    assert "## Results" not in card.text and "speed-up" not in card.text
    assert card.data.metrics is None


def test_lineage_section_lists_the_chain():
    lineage = [
        {
            "model": "/models/b",
            "teacher_model": "org/a",
            "student_num_parameters": 700,
            "teacher_num_parameters": 1000,
            "temperature": 3.0,
            "alpha": 0.0,
            "beta": 1.0,
            "gamma": 0.0,
        }
    ]
    card = build_model_card(_record(teacher_model="/models/b", teacher_lineage=lineage), model_name="c", load_path="c")
    assert card.data.base_model is None  # a local teacher is no Hub reference
    assert "Chain: `c` <- `/models/b` <- `org/a`" in card.text
    assert "`/models/b` (local) (700 parameters) was itself distilled" in card.text
