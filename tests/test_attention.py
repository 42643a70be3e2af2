"""Recorded attention maps equal the model's own eager maps, for every supported family, whatever the kernel."""

import pytest
import torch
from conftest import recorded_and_eager_maps
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hf_distill.attention import AttentionRecorder

COMMON = dict(vocab_size=64, max_position_embeddings=40, num_labels=2)


def _bert():
    return BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, **COMMON)
    )


def _roberta():
    return RobertaForSequenceClassification(
        RobertaConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, pad_token_id=1, **COMMON
        )
    )


def _electra():
    return ElectraForSequenceClassification(
        ElectraConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            **COMMON,
        )
    )


def _distilbert():
    return DistilBertForSequenceClassification(
        DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, **COMMON)
    )


BUILDERS = {"bert": _bert, "roberta": _roberta, "electra": _electra, "distilbert": _distilbert}


def _batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 11, 12, 0, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return input_ids, attention_mask


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_recorded_maps_equal_eager_maps_under_sdpa(family):
    torch.manual_seed(0)
    model = BUILDERS[family]().eval()
    assert model.config._attn_implementation == "sdpa"  # the transformers 5.x default
    input_ids, attention_mask = _batch()
    recorded, eager = recorded_and_eager_maps(model, [0, 2], input_ids=input_ids, attention_mask=attention_mask)
    for got, want in zip(recorded, (eager[0], eager[2])):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)


def test_maps_are_pre_dropout_in_training_mode():
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5, **COMMON,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    input_ids, attention_mask = _batch()
    recorder = AttentionRecorder(model, [0, 1])
    maps = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with recorder.recording(), torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
        maps[mode] = recorder.attention_maps()
    # Layer 0 sees the same inputs in both modes (attention dropout only acts after it), so its map is identical.
    torch.testing.assert_close(maps["train"][0], maps["eval"][0])
    for train_map in maps["train"]:  # dropout would zero entries and rescale rows to sum != 1
        torch.testing.assert_close(train_map.sum(-1), torch.ones_like(train_map.sum(-1)))
        assert torch.all(train_map[0] > 0)  # the unpadded example has no masked keys


def test_padding_does_not_change_the_valid_block():
    torch.manual_seed(0)
    model = _bert().eval()
    short_ids, short_mask = torch.tensor([[5, 11, 12]]), torch.tensor([[1, 1, 1]])
    long_ids, long_mask = torch.tensor([[5, 11, 12, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]])
    recorder = AttentionRecorder(model, [1])
    with recorder.recording(), torch.no_grad():
        model(input_ids=short_ids, attention_mask=short_mask)
    (short,) = recorder.attention_maps()
    with recorder.recording(), torch.no_grad():
        model(input_ids=long_ids, attention_mask=long_mask)
    (long,) = recorder.attention_maps()
    torch.testing.assert_close(long[:, :, :3, :3], short, atol=1e-6, rtol=1e-5)
    assert torch.all(long[:, :, :, 3:] == 0)


def test_missing_forward_raises_instead_of_returning_nothing():
    model = _bert()
    recorder = AttentionRecorder(model, [0])
    with recorder.recording():
        pass
    with pytest.raises(RuntimeError, match=r"no attention was recorded for layers \[0\]"):
        recorder.attention_maps()


def test_relative_position_models_outside_the_interface_are_refused_with_the_true_reason():
    # DeBERTa-v2's disentangled attention adds content-to-position terms no q/k rebuild can reproduce.
    model = DebertaV2ForSequenceClassification(
        DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        relative_attention=True, pos_att_type=["c2p", "p2c"], **COMMON)  # fmt: skip
    )
    with pytest.raises(ValueError, match="computes relative position attention in its own code.*gamma=0"):
        AttentionRecorder(model, [0])


def _mpnet(layers: int = 3, **dropout):
    config = MPNetConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                         **dropout, **COMMON)  # fmt: skip
    return MPNetForSequenceClassification(config)


def test_mpnet_maps_include_its_relative_position_bias_and_equal_its_own_maps():
    # MPNet's attention runs in its own code (relative position bias added to the scores): recorded by hooks.
    torch.manual_seed(0)
    model = _mpnet().eval()
    input_ids, attention_mask = _batch()
    recorded, eager = recorded_and_eager_maps(model, [0, 2], input_ids=input_ids, attention_mask=attention_mask)
    for got, want in zip(recorded, (eager[0], eager[2])):
        assert got.shape == want.shape == (2, 4, 6, 6)
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
    assert torch.all(recorded[0][1, :, :, 3:] == 0)  # padded keys
    # The bias matters: without it the same queries and keys give other maps.
    attention = model.mpnet.encoder.layer[0].attention.attn
    with torch.no_grad():
        x = model.mpnet.embeddings(input_ids=input_ids)
        q = attention.q(x).view(2, 6, 4, 8).transpose(1, 2)
        k = attention.k(x).view(2, 6, 4, 8).transpose(1, 2)
    no_bias = (q @ k.transpose(-1, -2) / 8**0.5)[0].softmax(-1)
    assert (no_bias - recorded[0][0]).abs().max() > 1e-3


def test_mpnet_maps_are_pre_dropout_and_keep_their_gradient():
    torch.manual_seed(0)
    model = _mpnet(2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5).train()
    input_ids, attention_mask = _batch()
    recorder = AttentionRecorder(model, [0, 1])
    with recorder.recording():
        model(input_ids=input_ids, attention_mask=attention_mask)
    maps = recorder.attention_maps()
    for layer_map in maps:  # dropout would zero entries and rescale rows to sum != 1
        torch.testing.assert_close(layer_map.sum(-1), torch.ones_like(layer_map.sum(-1)))
    maps[1].square().sum().backward()  # a student's attention term reaches its query and key weights
    layer = model.mpnet.encoder.layer[1].attention.attn
    assert layer.q.weight.grad.abs().sum() > 0 and layer.k.weight.grad.abs().sum() > 0


def test_mpnet_relation_states_are_its_projections():
    from hf_distill.attention import ProjectionRecorder

    torch.manual_seed(0)
    model = _mpnet().eval()
    input_ids, attention_mask = _batch()
    recorder = ProjectionRecorder(model, 1)
    with recorder.recording(), torch.no_grad():
        states = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1]
    got = recorder.projections()
    assert recorder.causal is False
    attention = model.mpnet.encoder.layer[1].attention.attn
    with torch.no_grad():
        for name, linear in (("query", attention.q), ("key", attention.k), ("value", attention.v)):
            torch.testing.assert_close(got[name], linear(states))


def test_nothing_is_recorded_outside_recording_and_the_kernel_is_restored():
    model = _bert().eval()
    recorder = AttentionRecorder(model, [0])
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    assert not recorder._calls
    with recorder.recording(), torch.no_grad():
        assert model.config._attn_implementation == "hf_distill_recording"
        model(input_ids=input_ids, attention_mask=attention_mask)
    assert model.config._attn_implementation == "sdpa"
    assert len(recorder.attention_maps()) == 1
