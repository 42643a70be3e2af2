"""build_student: a student of the teacher's class whose weights are the teacher's, with fewer layers."""

import re

import pytest
import torch
from conftest import VOCAB_SIZE, tiny_bert
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BartConfig,
    BartForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForTokenClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForSequenceClassification,
)

from hf_distill import build_student
from hf_distill.modeling import find_layers
from hf_distill.tasks import detect_task, task_logits

SMALL = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_attention_heads=4, intermediate_size=64)
DECODER = dict(SMALL, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)


def _seeded(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


BERT = dict(SMALL, num_hidden_layers=4, max_position_embeddings=64)
TEACHERS = {
    "bert": lambda: tiny_bert(num_layers=4, seed=0).eval(),
    "bert-token-classification": lambda: _seeded(BertForTokenClassification, BertConfig(**BERT, num_labels=5)),
    "bert-question-answering": lambda: _seeded(BertForQuestionAnswering, BertConfig(**BERT)),
    "bert-masked-lm": lambda: _seeded(BertForMaskedLM, BertConfig(**BERT)),
    "roberta": lambda: _seeded(
        RobertaForSequenceClassification,
        RobertaConfig(**SMALL, num_hidden_layers=4, max_position_embeddings=70, pad_token_id=1),
    ),
    "electra": lambda: _seeded(
        ElectraForSequenceClassification,
        ElectraConfig(**SMALL, embedding_size=16, num_hidden_layers=4, max_position_embeddings=64),
    ),
    "distilbert": lambda: _seeded(
        DistilBertForSequenceClassification,
        DistilBertConfig(
            vocab_size=VOCAB_SIZE, dim=32, n_heads=4, hidden_dim=64, n_layers=4, max_position_embeddings=64
        ),
    ),
    "llama": lambda: _seeded(LlamaForCausalLM, LlamaConfig(**DECODER, num_hidden_layers=4)),
    "qwen2": lambda: _seeded(Qwen2ForCausalLM, Qwen2Config(**DECODER, num_hidden_layers=4)),
    "qwen2-cls": lambda: _seeded(Qwen2ForSequenceClassification, Qwen2Config(**DECODER, num_hidden_layers=4)),
    "gpt2": lambda: _seeded(
        GPT2LMHeadModel, GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_head=4, n_layer=4, n_positions=64)
    ),
    "gpt2-cls": lambda: _seeded(
        GPT2ForSequenceClassification,
        GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_head=4, n_layer=4, n_positions=64, pad_token_id=0),
    ),
}


def _inputs():
    torch.manual_seed(1)
    input_ids = torch.randint(2, VOCAB_SIZE, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # one padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _layer_prefix(model):
    layers = find_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


@pytest.mark.parametrize("arch", list(TEACHERS))
def test_student_with_all_layers_reproduces_the_teacher(arch):
    teacher = TEACHERS[arch]()
    student = build_student(teacher, num_layers=4)
    assert type(student) is type(teacher) and student is not teacher
    assert not student.training
    inputs = _inputs()
    task = detect_task(teacher)
    with torch.no_grad():
        expected, got = task_logits(task, teacher(**inputs)), task_logits(task, student(**inputs))
    for got_logits, expected_logits in zip(got, expected, strict=True):
        assert torch.equal(got_logits, expected_logits)
    assert student.config.distillation_teacher_layers == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", list(TEACHERS))
def test_chosen_layers_and_everything_else_are_copies_of_the_teacher(arch):
    teacher = TEACHERS[arch]()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, num_layers=2, layers=[0, 3])
    assert len(find_layers(student)) == 2 and student.config.num_hidden_layers == 2
    assert student.config.distillation_teacher_layers == [0, 3]
    assert teacher.config.num_hidden_layers == 4  # teacher config untouched

    prefix = _layer_prefix(teacher)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for key, value in student_state.items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1 :].split(".", 1)
            source = f"{prefix}.{[0, 3][int(index)]}.{rest}"
        else:
            source = key  # embeddings, pooler, final norm, head
        assert torch.equal(value, teacher_state[source]), key
    # the copy is a copy: training the student cannot change the teacher
    next(student.parameters()).data.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_default_layers_spread_evenly_and_keep_the_last():
    teacher = tiny_bert(num_layers=12, hidden=16, heads=2)
    assert build_student(teacher, 6).config.distillation_teacher_layers == [1, 3, 5, 7, 9, 11]
    assert build_student(teacher, 4).config.distillation_teacher_layers == [2, 5, 8, 11]
    assert build_student(teacher, 1).config.distillation_teacher_layers == [11]


def test_per_layer_config_lists_follow_the_chosen_layers():
    config = Qwen2Config(**DECODER, num_hidden_layers=4, layer_types=["full_attention", "sliding_attention"] * 2)
    student = build_student(_seeded(Qwen2ForCausalLM, config), 2, layers=[1, 2])
    assert student.config.layer_types == ["sliding_attention", "full_attention"]


def test_student_saves_and_reloads_with_its_layers_recorded(tmp_path):
    student = build_student(tiny_bert(num_layers=4), 2)
    student.save_pretrained(tmp_path)
    reloaded = type(student).from_pretrained(tmp_path).eval()
    assert reloaded.config.distillation_teacher_layers == [1, 3]
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, student.eval()(**inputs).logits)


@pytest.mark.parametrize(
    ("num_layers", "layers", "message"),
    [
        (5, None, "more than the teacher's 4 layers"),
        (0, None, "`num_layers` must be a positive integer"),
        (2, [0, 4], "valid indices 0..3"),
        (2, [-1, 2], "valid indices 0..3"),
        (2, [1, 2, 3], "has 3 entries but the student has 2 layers"),
        (2, [2, 2], "strictly increasing"),
        (2, [3, 1], "strictly increasing"),
        (2, "13", "must be a list of integers"),
    ],
)
def test_impossible_requests_fail_clearly(num_layers, layers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_student(tiny_bert(num_layers=4), num_layers, layers)


def test_unknown_architecture_fails_clearly():
    class NotATransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

    with pytest.raises(ValueError, match="cannot find the transformer layers of NotATransformer"):
        build_student(NotATransformer(), 1)


# ---- architectures whose first layer differs, encoder-decoders, shared layers -----------------------------------


def _modernbert(num_layers=3):
    config = ModernBertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=num_layers, local_attention=4, global_attn_every_n_layers=3, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, num_labels=2,
    )  # fmt: skip
    return _seeded(ModernBertForSequenceClassification, config)


def test_modernbert_first_slot_keeps_its_structure_without_attention_norm():
    teacher = _modernbert()
    student = build_student(teacher, 2, layers=[1, 2])
    assert isinstance(student.model.layers[0].attn_norm, torch.nn.Identity)  # as ModernBERT's first layer must be
    assert student.config.layer_types == teacher.config.layer_types[1:]
    for name, value in student.model.layers[0].state_dict().items():  # everything else is teacher layer 1
        assert torch.equal(value, teacher.model.layers[1].state_dict()[name]), name
    assert not any(k.startswith("model.layers.0.attn_norm") for k in student.state_dict())
    with torch.no_grad():
        assert torch.isfinite(student(**_inputs()).logits).all()
    full = build_student(teacher, 3)
    with torch.no_grad():
        assert torch.equal(full(**_inputs()).logits, teacher(**_inputs()).logits)


ENCODER_DECODERS = {
    "bart": lambda: _seeded(
        BartForSequenceClassification,
        BartConfig(
            vocab_size=VOCAB_SIZE,
            d_model=32,
            encoder_layers=4,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            num_labels=2,
        ),  # fmt: skip
    ),
    "t5": lambda: _seeded(
        T5ForSequenceClassification,
        T5Config(
            vocab_size=VOCAB_SIZE,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=4,
            num_decoder_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=2,
            num_labels=2,
        ),  # fmt: skip
    ),
}


def _seq2seq_inputs():
    torch.manual_seed(1)
    input_ids = torch.randint(3, VOCAB_SIZE, (3, 9))
    input_ids[:, -1] = 2  # one eos per row, where BART and T5 classify
    input_ids[1, 5], input_ids[1, 6:] = 2, 0
    attention_mask = (input_ids != 0).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("arch", list(ENCODER_DECODERS))
def test_encoder_decoder_students_choose_encoder_and_decoder_layers(arch):
    teacher = ENCODER_DECODERS[arch]()
    full = build_student(teacher, 4, num_decoder_layers=3)
    inputs = _seq2seq_inputs()
    with torch.no_grad():
        assert torch.equal(full(**inputs).logits, teacher(**inputs).logits)

    student = build_student(teacher, 2, layers=[1, 3], decoder_layers=[0, 2])
    encoder, decoder = (student.base_model.encoder, student.base_model.decoder)
    stacks = [getattr(encoder, "layers", None) or encoder.block, getattr(decoder, "layers", None) or decoder.block]
    assert [len(s) for s in stacks] == [2, 2]
    assert student.config.distillation_teacher_layers == [1, 3]
    assert student.config.distillation_teacher_decoder_layers == [0, 2]
    t_encoder = getattr(teacher.base_model.encoder, "layers", None) or teacher.base_model.encoder.block
    for name, value in stacks[0][1].state_dict().items():
        assert torch.equal(value, t_encoder[3].state_dict()[name]), name
    if arch == "t5":  # block 0 holds the relative position bias every block uses: copied from teacher block 0
        bias = "layer.0.SelfAttention.relative_attention_bias.weight"
        assert torch.equal(stacks[0][0].state_dict()[bias], t_encoder[0].state_dict()[bias])
    with torch.no_grad():
        assert torch.isfinite(student(**inputs).logits).all()
    assert build_student(teacher, 2).config.distillation_teacher_decoder_layers == [0, 2]  # num_layers by default


def test_decoder_layers_are_refused_for_models_without_a_decoder():
    with pytest.raises(ValueError, match="has no decoder stack"):
        build_student(tiny_bert(num_layers=4), 2, num_decoder_layers=1)


def test_albert_is_refused_because_its_layers_are_shared():
    config = AlbertConfig(vocab_size=VOCAB_SIZE, embedding_size=16, hidden_size=32, num_attention_heads=4,
                          intermediate_size=64, num_hidden_layers=4)  # fmt: skip
    with pytest.raises(ValueError, match="shares its layer weights across depth"):
        build_student(AlbertForSequenceClassification(config), 2)
