"""The sequence-classification peers benchmark compares equal objectives (benchmarks/peers_seqcls.py).

On one batch, from the same initial student, the first step's loss of every configuration must equal the
hand-written loop's (`floor`), with and without the attention term: this checks that the timings compare the same
work, and that our trainer's seq-cls objective (CE + T^2 KL + head-mean attention MSE) is the hand-written one.
TextBrewer and torchdistill are optional benchmark extras: their checks are skipped where they do not import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers_seqcls  # noqa: E402


@pytest.fixture(scope="module")
def first_losses(tmp_path_factory):
    # init-range 0.5: peaked attention maps, so that the attention term is far from 0 and its equality means something
    opts = peers_seqcls.parse_args(
        ["--vocab", "64", "--width", "32", "--heads", "2", "--seq", "8", "--batch", "4", "--init-range", "0.5"]
    )
    runners, skipped = peers_seqcls.build_all(opts, str(tmp_path_factory.mktemp("peers")))
    batch = peers_seqcls.batches(opts, 1)[0]
    losses = {name: runner.step(batch) for name, runner in runners.items()}
    return losses, skipped, peers_seqcls.textbrewer_offset(opts, batch)


def test_ours_equals_the_hand_written_objective(first_losses):
    losses, _, _ = first_losses
    assert losses["floor_attn"] - losses["floor"] > 1e-3  # the attention term is in the objective
    assert losses["ours"] == pytest.approx(losses["floor"], rel=1e-5)
    assert losses["ours_attn"] == pytest.approx(losses["floor_attn"], rel=1e-5)


@pytest.mark.parametrize("peer", ["textbrewer", "torchdistill"])
@pytest.mark.parametrize("variant", ["", "_attn"])
def test_peers_compute_the_same_objective(first_losses, peer, variant):
    losses, skipped, textbrewer_offset = first_losses
    if peer + variant in skipped:
        pytest.skip(f"{peer} is not importable here: {skipped[peer + variant]}")
    offset = textbrewer_offset if peer == "textbrewer" else 0.0  # its soft CE = KL + the teacher's entropy
    assert losses[peer + variant] - offset == pytest.approx(losses["floor" + variant], rel=1e-5)


@pytest.mark.parametrize("task", ["causal-lm", "masked-lm", "seq2seq"])
def test_token_level_floors_compute_our_objective(tmp_path, task):
    """benchmarks/peers.py: per-token KD at T = 1, alpha = 0 from the hand-written loop, our unfused and our fused
    trainer give the same first-step loss on the same batch (so the timings compare equal work)."""
    import peers

    opts = peers.parse_args(["--task", task, "--vocab", "97", "--width", "16", "--seq", "12", "--batch", "3",
                             "--configs", "floor", "ours", "ours_fused"])  # fmt: skip
    runners, _ = peers.build_all(opts, str(tmp_path))
    batch = peers.batches(opts, 1)[0]
    losses = {name: runner.step(batch) for name, runner in runners.items()}
    assert losses["floor"] > 1e-3
    assert losses["ours"] == pytest.approx(losses["floor"], rel=1e-5)
    assert losses["ours_fused"] == pytest.approx(losses["floor"], rel=1e-5)
    assert runners["ours_fused"].trainer._student_capture is not None
    assert runners["ours"].trainer._student_capture is None
