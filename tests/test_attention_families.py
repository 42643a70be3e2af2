"""Recorded attention maps equal eager `output_attentions` on every family the attention interface serves.

One tiny model per family, with padding: rotary (Llama, ModernBERT), grouped-query attention (Qwen2, Mistral),
sliding windows (Mistral, ModernBERT's local layers), fused projections (GPT-2, ModernBERT), relative position bias
(T5's encoder), and the encoders of encoder-decoders (T5, BART). The relation term's states are the queries and
keys the attention reads: after rotary embeddings.
"""

import pytest
import torch
from conftest import recorded_and_eager_maps
from transformers import (
    BartConfig,
    BartForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    T5Config,
    T5EncoderModel,
    T5ForSequenceClassification,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from hf_distill.attention import ProjectionRecorder

DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               pad_token_id=0, num_labels=2)  # fmt: skip
BUILDERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **DECODER)),
    "qwen2-gqa": lambda: Qwen2ForSequenceClassification(Qwen2Config(num_key_value_heads=2, **DECODER)),
    "mistral-gqa-sliding": lambda: MistralForCausalLM(
        MistralConfig(num_key_value_heads=2, sliding_window=3, **DECODER)
    ),
    "modernbert-sliding": lambda: ModernBertForSequenceClassification(
        ModernBertConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            local_attention=4,
            global_attn_every_n_layers=3,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            pad_token_id=0,
            num_labels=2,
        )  # fmt: skip
    ),
    "gpt2": lambda: GPT2ForSequenceClassification(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=40, pad_token_id=0, num_labels=2)
    ),
    "t5-classifier-encoder": lambda: T5ForSequenceClassification(
        T5Config(
            vocab_size=64,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            eos_token_id=2,
            pad_token_id=0,
            num_labels=2,
        )  # fmt: skip
    ),
    "bart-encoder": lambda: BartForSequenceClassification(
        BartConfig(
            vocab_size=64,
            d_model=32,
            encoder_layers=3,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=40,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            num_labels=2,
        )  # fmt: skip
    ),
    "t5-encoder": lambda: T5EncoderModel(
        T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4, relative_attention_num_buckets=8
        )
    ),
}


def _batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 2], [5, 13, 14, 15, 2, 0, 0, 0]])  # BART classifies at eos (2)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_recorded_maps_equal_eager_maps(family):
    torch.manual_seed(0)
    model = BUILDERS[family]().eval()
    assert model.config._attn_implementation == "sdpa"
    recorded, eager = recorded_and_eager_maps(model, [0, 1, 2], **_batch())
    assert len(eager) == 3
    for got, want in zip(recorded, eager):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
    if family.startswith(("mistral", "modernbert")):  # the window really masked something in layer 1
        assert (eager[1][0, :, 7, 0] == 0).all() and (eager[1][0, :, 7, 7] > 0).all()


def test_relation_states_are_the_rotated_queries_and_keys_before_gqa_expansion():
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(Qwen2Config(num_key_value_heads=2, **DECODER)).eval()
    batch = _batch()
    recorder = ProjectionRecorder(model, 1)
    with recorder.recording(), torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states[1]  # the input of layer 1
    got = recorder.projections()
    assert recorder.causal is True

    attention = model.model.layers[1].self_attn
    with torch.no_grad():
        x = model.model.layers[1].input_layernorm(states)
        q = attention.q_proj(x).view(2, 8, 4, 8).transpose(1, 2)  # (B, H, T, D)
        k = attention.k_proj(x).view(2, 8, 2, 8).transpose(1, 2)  # (B, H_kv, T, D)
        v = attention.v_proj(x)
        cos, sin = model.model.rotary_emb(x, torch.arange(8)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(got["query"], q.transpose(1, 2).flatten(2))
    torch.testing.assert_close(got["key"], k.transpose(1, 2).flatten(2))  # (B, T, 16): two key heads
    torch.testing.assert_close(got["value"], v)
