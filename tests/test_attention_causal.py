"""Causal decoders with absolute positions: recorded maps and relations see only the tokens before each query."""

import pytest
import torch
from conftest import recorded_and_eager_maps
from transformers import (
    BertConfig,
    BertLMHeadModel,
    ElectraConfig,
    ElectraForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    RobertaConfig,
    RobertaForCausalLM,
    XLMRobertaConfig,
    XLMRobertaForCausalLM,
)

from hf_distill.losses import relation_kl_loss

BERT_LIKE = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=40, is_decoder=True, pad_token_id=1,
)  # fmt: skip
OPT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
    max_position_embeddings=40, word_embed_proj_dim=32, pad_token_id=1,
)  # fmt: skip
BUILDERS = {
    "bert": lambda: BertLMHeadModel(BertConfig(**BERT_LIKE)),
    "roberta": lambda: RobertaForCausalLM(RobertaConfig(**BERT_LIKE)),
    "xlm-roberta": lambda: XLMRobertaForCausalLM(XLMRobertaConfig(**BERT_LIKE)),
    "electra": lambda: ElectraForCausalLM(ElectraConfig(embedding_size=16, **BERT_LIKE)),
    "opt": lambda: OPTForCausalLM(OPTConfig(**OPT)),
}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_recorded_maps_of_causal_decoders_equal_eager_maps(family):
    torch.manual_seed(0)
    model = BUILDERS[family]().eval()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 11, 12, 1, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    recorded, eager = recorded_and_eager_maps(model, [0, 1], input_ids=input_ids, attention_mask=attention_mask)
    for got, want in zip(recorded, eager):
        assert torch.all(want[:, :, 0, 1:] == 0)  # the eager maps are causal: the first token sees only itself
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)


def test_causal_relation_relates_each_token_to_the_tokens_before_it():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    lengths, heads = [5, 3], 2
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = relation_kl_loss(student, teacher, heads, attention_mask, reduction="none", causal=True)
    expected = []
    for b, n in enumerate(lengths):  # per example, relation head and real query i: KL over the keys j <= i
        rows = []
        for r in range(heads):
            s = student[b, :n].view(n, heads, -1)[:, r]
            t = teacher[b, :n].view(n, heads, -1)[:, r]
            for i in range(n):
                log_s = (s[: i + 1] @ s[i] / s.shape[-1] ** 0.5).log_softmax(-1)
                log_t = (t[: i + 1] @ t[i] / t.shape[-1] ** 0.5).log_softmax(-1)
                rows.append((log_t.exp() * (log_t - log_s)).sum())
        expected.append(torch.stack(rows).mean())
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(got, relation_kl_loss(student, teacher, heads, attention_mask, reduction="none"))
