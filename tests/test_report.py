"""The report's arithmetic, the fallback metrics, the markdown and the plot, on hand-computed numbers."""

import builtins
import json

import pytest
from sklearn.metrics import accuracy_score, f1_score

from hf_distill.command.plots import plot_training_curves
from hf_distill.command.report import compare, render_markdown, speedup, write_report
from hf_distill.task_metrics import accuracy, binary_f1


def test_compare_by_hand():
    # teacher 0.90, student 0.60 before and 0.84 after: keeps 0.84/0.90, closes 0.24 of the 0.30 gap
    result = compare(0.90, 0.60, 0.84, teacher_parameters=110_000_000, student_parameters=66_000_000)
    assert result["retention"] == pytest.approx(0.9333333333)
    assert result["gap_closed"] == pytest.approx(0.8)
    assert result["compression_ratio"] == pytest.approx(5 / 3)
    assert result["parameter_reduction"] == pytest.approx(0.4)
    assert (result["teacher"], result["student_before"], result["student_after"]) == (0.90, 0.60, 0.84)


def test_compare_edge_cases():
    worse = compare(0.8, 0.7, 0.65, 4, 2)  # distillation made it worse: a negative share of the gap
    assert worse["gap_closed"] == pytest.approx(-0.5)
    beyond = compare(0.8, 0.6, 0.9, 4, 2)  # student beats the teacher
    assert beyond["gap_closed"] == pytest.approx(1.5) and beyond["retention"] == pytest.approx(1.125)
    no_gap = compare(0.8, 0.8, 0.8, 4, 4)
    assert no_gap["gap_closed"] is None and no_gap["compression_ratio"] == 1.0
    assert compare(0.0, 0.0, 0.5, 4, 2)["retention"] is None
    with pytest.raises(ValueError, match="parameter counts must be > 0"):
        compare(0.9, 0.5, 0.8, 100, 0)


def test_speedup_by_hand():
    assert speedup(200.0, 500.0) == pytest.approx(2.5)
    assert speedup(0.0, 500.0) is None


@pytest.mark.parametrize("seed", range(3))
def test_fallback_metrics_match_sklearn(seed):
    import random

    rng = random.Random(seed)
    predictions = [rng.randint(0, 1) for _ in range(50)]
    references = [rng.randint(0, 1) for _ in range(50)]
    assert accuracy(predictions, references) == pytest.approx(accuracy_score(references, predictions))
    assert binary_f1(predictions, references) == pytest.approx(f1_score(references, predictions))


def test_fallback_metrics_by_hand():
    # tp=1 (index 0), fp=1 (index 1), fn=1 (index 2), tn=1 (index 3)
    assert binary_f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert accuracy([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert binary_f1([0, 0], [0, 0]) == 0.0  # no positives anywhere: sklearn's zero_division default
    with pytest.raises(ValueError, match="as many predictions as references"):
        accuracy([1], [1, 0])


def _report():
    evaluation = {
        name: {
            "metrics": {"accuracy": acc},
            "throughput": {"examples_per_second": eps},
            "latency_batch_size_1": {"median_ms": ms},
        }
        for name, acc, eps, ms in (
            ("teacher", 0.9, 100.0, 20.0),
            ("student_before", 0.6, 180.0, 11.0),
            ("student_after", 0.84, 200.0, 10.0),
        )  # fmt: skip
    }
    return {
        "title": "Distillation report",
        "notes": ["A demo."],
        "metric": "accuracy",
        "teacher": {"name_or_path": "t", "architecture": "Bert", "num_parameters": 1000, "num_layers": 4},
        "student": {"source": "built", "architecture": "Bert", "num_parameters": 600, "num_layers": 2},
        "evaluation": evaluation,
        "comparison": compare(0.9, 0.6, 0.84, 1000, 600),
        "speed": {
            "device": "cpu",
            "batch_size": 8,
            "latency_samples": 4,
            "throughput_speedup": 2.0,
            "latency_speedup": 2.0,
        },  # fmt: skip
        "training": {"settings": {"temperature": 4.0, "learning_rate": 2e-05, "layer_map": [1, 3]}},
    }


def test_markdown_shows_the_numbers(tmp_path):
    json_path, md_path = write_report(tmp_path, _report())
    text = md_path.read_text()
    assert "| accuracy | 0.9000 | 0.6000 | 0.8400 |" in text
    assert "| parameters | 1,000 | 600 | 600 |" in text
    assert "93.33 %" in text and "80.00 %" in text and "1.67x" in text and "40.00 % smaller" in text
    assert "| learning_rate | 2e-05 |" in text and "| layer_map | [1, 3] |" in text
    assert "> A demo." in text
    assert json.loads(json_path.read_text())["comparison"]["gap_closed"] == pytest.approx(0.8)
    assert render_markdown(_report()) == text


def test_plot_written_with_matplotlib(tmp_path):
    history = {
        "train": [
            {"step": s, "loss": 1.0 / s, "loss_ce": 0.5, "loss_kd": 0.4, "loss_attn": 0.1, "learning_rate": 1e-4}
            for s in (1, 2, 3)
        ],  # fmt: skip
        "eval": [{"step": 3, "eval_accuracy": 0.8, "eval_distillation_loss": 0.3}],
    }
    path, reason = plot_training_curves(history, tmp_path / "curves.png", teacher_metric=0.9)
    assert reason is None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_why(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    path, reason = plot_training_curves({"train": [{"step": 1, "loss": 1.0}]}, tmp_path / "curves.png")
    assert path is None and "matplotlib is not installed" in reason and "hf-distill[plots]" in reason
    assert not (tmp_path / "curves.png").exists()
