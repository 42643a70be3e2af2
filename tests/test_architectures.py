"""The trainer beyond the BERT family: logit-only runs without a layer list, relations on rotary models, speech."""

import pytest
import torch
from conftest import recorded_and_eager_maps
from test_support_matrix import _batch, _model
from test_trainer import make_args
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from hf_distill import DistillationTrainer
from hf_distill.recipes import RECIPES


@pytest.mark.parametrize("name", ["ALBERT", "T5"])
def test_logit_distillation_needs_no_layer_list(tmp_path, name):
    teacher, student = _model(name, seed=0).eval(), _model(name, seed=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, gamma=0.0))
    assert (trainer.layer_map is None) == (name == "ALBERT")  # ALBERT has no list of distinct layers
    student.train()
    loss = trainer.compute_loss(student, _batch("text"))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("name", ["Llama", "Qwen2 (GQA)"])
def test_minilmv2_recipe_runs_on_rotary_models(tmp_path, name):
    teacher, student = _model(name, seed=0).eval(), _model(name, seed=1)
    args = make_args(tmp_path, **RECIPES["minilmv2"].settings)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    student.train()
    kind = "lm" if name == "Llama" else "text"
    trainer.compute_loss(student, _batch(kind))
    relation = trainer._pop_term_means("train")["loss_relation"]
    assert 0 < relation < float("inf")
    assert trainer._teacher_projections.causal and trainer._student_projections.causal


def test_wav2vec2_maps_use_the_frame_mask_the_model_computes(tmp_path):
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(8, 8),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        num_labels=2, vocab_size=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(config).eval()
    batch = _batch("audio")
    inputs = {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}
    recorded, eager = recorded_and_eager_maps(model, [0, 1], **inputs)
    frames = model._get_feature_vector_attention_mask(recorded[0].shape[-1], inputs["attention_mask"])
    assert frames.shape == (2, 39) and frames[1].sum() < 39  # the padded row has fewer frames
    for got, want in zip(recorded, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert (got[1][..., ~frames[1].bool()] == 0).all()  # padded frames get no attention

    trainer = DistillationTrainer(
        model=_model("wav2vec2", seed=1), teacher_model=_model("wav2vec2", seed=0),
        args=make_args(tmp_path, gamma=1.0, hidden_weight=1.0, relation_weight=1.0),
    )  # fmt: skip
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
