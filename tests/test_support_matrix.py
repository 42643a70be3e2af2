"""The architecture x term support matrix in docs/support_matrix.md, regenerated from tiny models of each family.

Every cell is computed here: a tiny teacher of the family (built from a config, no Hub) and a student of the same
shape go through `DistillationTrainer` and one training-mode `compute_loss` with one term switched on. A cell is
"works" when the loss is finite, "refused: <reason>" when the trainer refuses the settings with a `ValueError`
before any work; any other exception fails the test (a crash is never an acceptable answer). The `build_student`
column builds a 1-layer student (or a 1+1-layer encoder-decoder) and runs it.

Rewrite the table after a deliberate change with:

    UPDATE_SUPPORT_MATRIX=1 python -m pytest -q tests/test_support_matrix.py
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import transformers as tf
from test_trainer import make_args

from hf_distill import DistillationTrainer, build_student

MATRIX = Path(__file__).resolve().parent.parent / "docs" / "support_matrix.md"
TEXT = dict(vocab_size=64, num_labels=2, pad_token_id=0)
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **TEXT)
DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **TEXT)
SPECIAL = dict(bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
WAV2VEC2 = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(8, 8),
    conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
    num_labels=2, vocab_size=16, layerdrop=0.0,  # LayerDrop would skip the layers the layer-wise terms compare
)  # fmt: skip
WHISPER = dict(
    d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=16,
    vocab_size=64, num_labels=2, pad_token_id=0, decoder_start_token_id=1,
)  # fmt: skip
BART = dict(
    d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40, bos_token_id=1, eos_token_id=2, **TEXT,
)  # fmt: skip

VISION = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, num_labels=2)  # fmt: skip

# name -> (model class, config class, config kwargs, input kind)
ARCHITECTURES = {
    "BERT": (tf.BertForSequenceClassification, tf.BertConfig, BERT, "text"),
    "BERT decoder (is_decoder)": (tf.BertLMHeadModel, tf.BertConfig, dict(BERT, is_decoder=True), "lm"),
    "RoBERTa": (tf.RobertaForSequenceClassification, tf.RobertaConfig, BERT, "text"),
    "XLM-RoBERTa": (tf.XLMRobertaForSequenceClassification, tf.XLMRobertaConfig, BERT, "text"),
    "ELECTRA": (tf.ElectraForSequenceClassification, tf.ElectraConfig, dict(BERT, embedding_size=16), "text"),
    "DistilBERT": (tf.DistilBertForSequenceClassification, tf.DistilBertConfig, BERT, "text"),
    "ALBERT": (tf.AlbertForSequenceClassification, tf.AlbertConfig, dict(BERT, embedding_size=16), "text"),
    "DeBERTa-v2": (tf.DebertaV2ForSequenceClassification, tf.DebertaV2Config,
                   dict(BERT, relative_attention=True, pos_att_type=["c2p", "p2c"]), "text"),
    "MPNet": (tf.MPNetForSequenceClassification, tf.MPNetConfig, BERT, "text"),
    "ModernBERT": (tf.ModernBertForSequenceClassification, tf.ModernBertConfig,
                   dict(BERT, num_hidden_layers=3, local_attention=4, global_attn_every_n_layers=3, **SPECIAL),
                   "text"),
    "GPT-2": (tf.GPT2ForSequenceClassification, tf.GPT2Config,
              dict(n_embd=32, n_layer=2, n_head=4, n_positions=40, **TEXT), "text"),
    "OPT": (tf.OPTForCausalLM, tf.OPTConfig,
            dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32,
                 **TEXT), "lm"),
    "Llama": (tf.LlamaForCausalLM, tf.LlamaConfig, DECODER, "lm"),
    "Qwen2 (GQA)": (tf.Qwen2ForSequenceClassification, tf.Qwen2Config, dict(DECODER, num_key_value_heads=2), "text"),
    "Mistral (GQA, sliding window)": (tf.MistralForCausalLM, tf.MistralConfig,
                                      dict(DECODER, num_key_value_heads=2, sliding_window=3), "lm"),
    "T5": (tf.T5ForSequenceClassification, tf.T5Config,
           dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                decoder_start_token_id=0, **TEXT), "text"),
    "BART": (tf.BartForSequenceClassification, tf.BartConfig, BART, "text"),
    "wav2vec2": (tf.Wav2Vec2ForSequenceClassification, tf.Wav2Vec2Config, WAV2VEC2, "audio"),
    "Whisper encoder": (tf.WhisperForAudioClassification, tf.WhisperConfig, WHISPER, "mel"),
    "ViT": (tf.ViTForImageClassification, tf.ViTConfig, VISION, "image"),
    "DeiT": (tf.DeiTForImageClassification, tf.DeiTConfig, VISION, "image"),
    "ConvNeXt": (tf.ConvNextForImageClassification, tf.ConvNextConfig,
                 dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=2), "image"),
    "Swin": (tf.SwinForImageClassification, tf.SwinConfig,
             dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4,
                  num_labels=2), "image"),
}  # fmt: skip
TERMS = {
    "logits": dict(alpha=0.5, beta=0.5, gamma=0.0),
    "attention": dict(alpha=0.0, beta=0.0, gamma=1.0, attention_loss="kl"),
    "hidden states": dict(alpha=0.0, beta=0.0, gamma=0.0, hidden_weight=1.0),
    "relations (MiniLMv2)": dict(alpha=0.0, beta=0.0, gamma=0.0, relation_weight=1.0, relation_loss="qkv"),
}


def _model(name: str, seed: int):
    model_class, config_class, kwargs, _ = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return model_class(config_class(**kwargs))


def _batch(kind: str) -> dict[str, torch.Tensor]:
    if kind in ("text", "lm"):
        input_ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 2], [1, 11, 12, 13, 2, 0, 0, 0]])
        attention_mask = (input_ids != 0).long()
        labels = input_ids.masked_fill(attention_mask == 0, -100) if kind == "lm" else torch.tensor([0, 1])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    generator = torch.Generator().manual_seed(0)
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator), "labels": torch.tensor([0, 1])}
    if kind == "audio":
        attention_mask = torch.ones(2, 400, dtype=torch.long)
        attention_mask[1, 250:] = 0
        values = torch.randn(2, 400, generator=generator) * attention_mask
        return {"input_values": values, "attention_mask": attention_mask, "labels": torch.tensor([0, 1])}
    return {"input_features": torch.randn(2, 8, 32, generator=generator), "labels": torch.tensor([0, 1])}


def _refusal(error: ValueError) -> str:
    return "refused: " + str(error).split(". ")[0].split("\n")[0].rstrip(".") + "."  # its first sentence


def _term_cell(name: str, term: str, tmp_path: Path) -> str:
    teacher, student = _model(name, seed=0).eval(), _model(name, seed=1)
    try:
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, **TERMS[term]))
    except ValueError as error:
        return _refusal(error)
    student.train()
    loss = trainer.compute_loss(student, _batch(ARCHITECTURES[name][3]))
    assert math.isfinite(loss.item()), f"{name} / {term}: loss {loss.item()}"
    return "works"


def _build_student_cell(name: str) -> str:
    teacher = _model(name, seed=0).eval()
    try:
        student = build_student(teacher, 1)
    except ValueError as error:
        return _refusal(error)
    batch = {k: v for k, v in _batch(ARCHITECTURES[name][3]).items() if k != "labels"}
    with torch.no_grad():
        student.eval()(**batch)
    return "works"


def _table(tmp_path: Path) -> str:
    """The matrix, with each refusal's reason written once below it and referred to by number in the cells."""
    columns = [*TERMS, "build_student"]
    lines = ["| Architecture | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    reasons: list[str] = []
    for name in ARCHITECTURES:
        cells = [_term_cell(name, term, tmp_path) for term in TERMS] + [_build_student_cell(name)]
        for i, cell in enumerate(cells):
            if cell.startswith("refused: "):
                reason = cell.removeprefix("refused: ")
                reasons += [reason] if reason not in reasons else []
                cells[i] = f"refused [{reasons.index(reason) + 1}]"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Reasons for the refusals:", ""] + [f"{i}. {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines)


HEADER = """# Support matrix

Which distillation terms work on which architectures (transformers 5.24, tiny models built in code). "works": one
training step of the term gives a finite loss; the attention and relation terms use the model's real attention
(checked against eager `output_attentions` per family in `tests/test_attention*.py`). "refused": the trainer (or
`build_student`) stops before any work, with this reason.

Generated by `tests/test_support_matrix.py`, which fails when this file differs from what the code does. After a
deliberate change, rewrite it with:

    UPDATE_SUPPORT_MATRIX=1 python -m pytest -q tests/test_support_matrix.py

"""


def test_support_matrix_matches_the_docs(tmp_path, one_thread):
    text = HEADER + _table(tmp_path) + "\n"
    if os.environ.get("UPDATE_SUPPORT_MATRIX"):
        MATRIX.write_text(text, encoding="utf-8")
    assert MATRIX.is_file(), f"{MATRIX} is missing: run UPDATE_SUPPORT_MATRIX=1 pytest {__file__}"
    assert MATRIX.read_text(encoding="utf-8") == text, "docs/support_matrix.md is stale: see this test's docstring"
