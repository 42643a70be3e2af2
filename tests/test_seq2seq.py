"""Seq2seq distillation (T5, BART): the task's loss against a reference from the models' own teacher forcing, the
encoder terms, `build_student`'s encoder/decoder layers, `DistillationSeq2SeqTrainer` with generation, bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_distill import (
    DistillationArguments,
    DistillationSeq2SeqArguments,
    DistillationSeq2SeqTrainer,
    DistillationTrainer,
    build_student,
)
from hf_distill.tasks import SEQ2SEQ, detect_task
from hf_distill.tasks.seq2seq import decoder_inputs_from_labels

VOCAB = 48


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


PAD, EOS = 0, 1


def tiny_bart(encoder_layers=4, decoder_layers=4, seed=0, **overrides) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, d_model=32, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    max_position_embeddings=64, pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS,
                    decoder_start_token_id=EOS, forced_eos_token_id=None, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, init_std=0.3) | overrides  # fmt: skip
    config = BartConfig(**settings)
    model = BartForConditionalGeneration(config)
    with torch.no_grad():  # a non-zero bias, so a loss that forgot it would differ
        model.final_logits_bias.normal_(0, 1.0)
    return model


def tiny_t5(num_layers=4, num_decoder_layers=4, seed=0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=num_layers,
                    num_decoder_layers=num_decoder_layers, num_heads=4, dropout_rate=0.0, pad_token_id=PAD,
                    eos_token_id=EOS, decoder_start_token_id=PAD, initializer_factor=1.0) | overrides  # fmt: skip
    config = T5Config(**settings)
    return T5ForConditionalGeneration(config)


def batch(seed=0, size=4) -> dict[str, torch.Tensor]:
    """Sources and targets of different lengths: padded inputs, -100-padded labels."""
    g = torch.Generator().manual_seed(seed)
    sources = [torch.randint(3, VOCAB, (n,), generator=g).tolist() + [EOS] for n in (7, 3, 5, 9)[:size]]
    targets = [torch.randint(3, VOCAB, (n,), generator=g).tolist() + [EOS] for n in (4, 6, 2, 5)[:size]]
    width, target_width = max(map(len, sources)), max(map(len, targets))
    return {
        "input_ids": torch.tensor([s + [PAD] * (width - len(s)) for s in sources]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources]),
        "labels": torch.tensor([t + [-100] * (target_width - len(t)) for t in targets]),
    }


def arguments(tmp_path, cls=DistillationArguments, **overrides):
    settings = dict(output_dir=str(tmp_path), alpha=0.3, beta=0.7, gamma=0.0, temperature=2.0, report_to="none",
                    use_cpu=True, disable_tqdm=True, seed=0) | overrides  # fmt: skip
    return cls(**settings)


def reference_loss(student, teacher, inputs, alpha, beta, temperature) -> torch.Tensor:
    """alpha * the student's own seq2seq loss + beta * T^2 KL per target token, from the models' own teacher forcing
    (each shifts `labels` itself: no decoder inputs are passed)."""
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
    s_out = student(**inputs)
    valid = inputs["labels"] != -100
    s_log = F.log_softmax(s_out.logits[valid] / temperature, dim=-1)
    t_log = F.log_softmax(t_logits[valid] / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=-1).mean()  # KL(teacher || student), mean over target tokens
    return alpha * s_out.loss + beta * temperature**2 * kl


@pytest.mark.parametrize("make", [tiny_bart, tiny_t5], ids=["bart", "t5"])
def test_loss_is_token_kd_and_ce_on_the_decoder_under_teacher_forcing(tmp_path, make):
    teacher, student = make(seed=1), make(2, 2, seed=2)
    assert detect_task(student) is SEQ2SEQ
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=arguments(tmp_path))
    assert trainer._student_capture is not None  # the default: fused heads, checked against the reference
    inputs = batch()
    student.train()
    loss = trainer.compute_loss(student, dict(inputs))  # no decoder_input_ids: the task makes them from labels
    expected = reference_loss(student, teacher, inputs, 0.3, 0.7, 2.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    # per target token: appending label padding (and decoder padding) changes nothing
    padded = dict(inputs, labels=F.pad(inputs["labels"], (0, 3), value=-100))
    torch.testing.assert_close(trainer.compute_loss(student, padded), loss, rtol=1e-5, atol=1e-6)


def test_decoder_inputs_are_the_models_own_shift():
    for model in (tiny_bart(), tiny_t5()):
        labels = batch()["labels"]
        own = model.prepare_decoder_input_ids_from_labels(labels=labels)
        assert torch.equal(decoder_inputs_from_labels(labels, model.config), own)


def test_encoder_attention_and_hidden_terms_train_and_are_logged(tmp_path):
    teacher, student = tiny_bart(seed=1), tiny_bart(2, 2, seed=2)
    before = {n: p.clone() for n, p in student.named_parameters()}
    args = arguments(tmp_path, gamma=0.5, hidden_weight=0.5, max_steps=3, logging_steps=1, learning_rate=1e-2,
                     per_device_train_batch_size=4, save_strategy="no")  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq2seq_rows(8, 0),
                                  data_collator=pad_rows)  # fmt: skip
    assert trainer.layer_map == [1, 3]  # encoder layers: 2 of the teacher's 4
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for name in ("loss_ce", "loss_kd", "loss_attn", "loss_hidden"):
        assert all(entry[name] > 0 for entry in logs), name
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters() if "encoder.layers" in n)


STACKS = {"bart": (tiny_bart, ("encoder.layers", "decoder.layers")),
          "t5": (tiny_t5, ("encoder.block", "decoder.block"))}  # fmt: skip


@pytest.mark.parametrize("make, stacks", list(STACKS.values()), ids=list(STACKS))
def test_build_student_picks_encoder_and_decoder_layers(make, stacks):
    teacher = make(seed=3).eval()
    inputs = batch()
    with torch.no_grad():
        expected = teacher(**inputs).logits
    same = build_student(teacher, num_layers=4, num_decoder_layers=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(**inputs).logits, expected)  # every layer kept: the teacher exactly

    student = build_student(teacher, num_layers=4, decoder_layers=[3])  # DistilBART's 12-3 style: full encoder
    encoder, decoder = (student.get_submodule(f"{student.base_model_prefix}.{s}")
                        if hasattr(student, student.base_model_prefix) else student.get_submodule(s)
                        for s in stacks)  # fmt: skip
    assert (len(encoder), len(decoder)) == (4, 1)
    assert student.config.distillation_teacher_decoder_layers == [3]
    t_decoder = teacher.get_decoder()
    t_layer = (t_decoder.layers if hasattr(t_decoder, "layers") else t_decoder.block)[3]
    copied = dict(t_layer.named_parameters())
    for name, p in decoder[0].named_parameters():
        if "relative_attention_bias" not in name:  # T5 keeps block 0's position bias in the first slot
            assert torch.equal(p, copied[name]), name
    half = build_student(teacher, num_layers=2, num_decoder_layers=2)  # 6-6 style from 12-12
    assert half.config.distillation_teacher_layers == [1, 3]
    assert half.config.distillation_teacher_decoder_layers == [1, 3]


def seq2seq_rows(n, seed):
    rows = []
    for s in range(n):
        b = batch(seed=seed * 100 + s, size=1)
        rows.append({"input_ids": b["input_ids"][0].tolist(), "labels": b["labels"][0].tolist()})
    return Dataset.from_list(rows)


def pad_rows(features):
    width = max(len(f["input_ids"]) for f in features)
    target = max(len(f["labels"]) for f in features)
    return {
        "input_ids": torch.tensor([f["input_ids"] + [PAD] * (width - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        ),  # fmt: skip
        "labels": torch.tensor([f["labels"] + [-100] * (target - len(f["labels"])) for f in features]),
    }


def test_seq2seq_trainer_generates_at_evaluation_and_saves_the_generation_config(tmp_path):
    teacher = tiny_t5(seed=1)
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction.predictions)
        return {"generated_length": float((prediction.predictions != PAD).sum(axis=1).mean())}

    args = arguments(tmp_path, DistillationSeq2SeqArguments, student_num_layers=2, predict_with_generate=True,
                     generation_max_length=5, generation_num_beams=2, max_steps=2, per_device_train_batch_size=4,
                     per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=2, save_strategy="no",
                     learning_rate=1e-3)  # fmt: skip
    trainer = DistillationSeq2SeqTrainer(model=teacher, args=args, train_dataset=seq2seq_rows(8, 0),
                                         eval_dataset=seq2seq_rows(6, 1), data_collator=pad_rows,
                                         compute_metrics=compute_metrics)  # fmt: skip
    trainer.train()
    student = trainer.model
    assert len(student.encoder.block) == 2 and len(student.decoder.block) == 2
    evaluation = trainer.state.log_history[-2] if "eval_loss" in trainer.state.log_history[-2] else next(
        e for e in trainer.state.log_history if "eval_loss" in e)  # fmt: skip
    assert {"eval_loss", "eval_loss_kd", "eval_loss_ce", "eval_generated_length"} <= set(evaluation)
    generated = seen[-1]
    assert generated.ndim == 2 and generated.shape[0] == 6  # generated ids, not (N, T, V) logits
    assert (generated[:, 5:] == PAD).all()  # generation_max_length=5; Seq2SeqTrainer pads to the config's length
    assert not torch.is_floating_point(torch.as_tensor(generated))
    # the teacher-forced eval loss is the student's own CE on the labels
    student.eval()
    rows = pad_rows(list(seq2seq_rows(6, 1)))
    with torch.no_grad():
        own = student(**rows).loss
    assert evaluation["eval_loss"] == pytest.approx(own.item(), rel=1e-4)

    trainer.save_model()
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["decoder_start_token_id"] == PAD
    assert json.loads((tmp_path / "distillation_config.json").read_text())["task"] == "seq2seq"
    beam = trainer.predict(seq2seq_rows(2, 2), max_length=4, num_beams=1)
    assert beam.predictions.shape[0] == 2 and (beam.predictions[:, 4:] == PAD).all()


def test_seq2seq_arguments_have_both_sets_of_fields_once():
    import dataclasses

    names = [f.name for f in dataclasses.fields(DistillationSeq2SeqArguments)]
    assert len(names) == len(set(names))
    assert {"predict_with_generate", "generation_max_length", "temperature", "alpha"} <= set(names)
    assert names.count("temperature") == 1
    from transformers import HfArgumentParser

    argv = ["--output_dir", "out", "--predict_with_generate", "--generation_num_beams", "3", "--recipe", "hinton"]
    (parsed,) = HfArgumentParser(DistillationSeq2SeqArguments).parse_args_into_dataclasses(argv)
    assert parsed.predict_with_generate and parsed.generation_num_beams == 3
    assert (parsed.alpha, parsed.beta, parsed.gamma) == (0.1, 0.9, 0.0)  # DistillationArguments' checks ran
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        DistillationSeq2SeqArguments(output_dir="out", temperature=0.0)


# ---- bad input, before any work ----------------------------------------------------------------------------------


def test_refuses_a_causal_lm_teacher_for_a_seq2seq_student(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64))
    with pytest.raises(
        ValueError, match=r"BartForConditionalGeneration \(seq2seq\) but the teacher a GPT2LMHeadModel"
    ):
        DistillationTrainer(model=tiny_bart(2, 2), teacher_model=gpt2, args=arguments(tmp_path))


def test_refuses_a_vocabulary_mismatch(tmp_path):
    with pytest.raises(ValueError, match="teacher vocab_size=48 differs from student vocab_size=40"):
        DistillationTrainer(model=tiny_t5(2, 2, vocab_size=40), teacher_model=tiny_t5(), args=arguments(tmp_path))


def test_refuses_different_decoder_start_tokens(tmp_path):
    with pytest.raises(
        ValueError, match="decoder_start_token_id=0 differs from the student's decoder_start_token_id=1"
    ):
        DistillationTrainer(model=tiny_t5(2, 2, decoder_start_token_id=EOS), teacher_model=tiny_t5(),
                            args=arguments(tmp_path))  # fmt: skip


def test_refuses_the_cache(tmp_path):
    with pytest.raises(ValueError, match="seq2seq model: its labels are the decoder's inputs"):
        DistillationTrainer(model=tiny_bart(2, 2), teacher_model=tiny_bart(),
                            args=arguments(tmp_path, teacher_cache_dir=str(tmp_path / "cache")),
                            train_dataset=seq2seq_rows(2, 0))  # fmt: skip


@pytest.mark.parametrize("make", [tiny_bart, tiny_t5], ids=["bart", "t5"])
def test_fused_heads_train_the_same_student_as_materialised_logits(tmp_path, make):
    """The default fuses the heads into the loss (BART's final_logits_bias folded in, T5's scaling before the head):
    one SGD step lands on the same weights, with the same logged terms, as with fuse_lm_head=False."""
    states = []
    for fuse in (None, False):
        teacher, student = make(seed=1), make(2, 2, seed=2)
        args = arguments(tmp_path, fuse_lm_head=fuse, max_steps=1, logging_steps=1, optim="sgd", learning_rate=1.0,
                         max_grad_norm=0.0, lr_scheduler_type="constant", per_device_train_batch_size=4,
                         save_strategy="no")  # fmt: skip
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                      train_dataset=seq2seq_rows(4, 1), data_collator=pad_rows)  # fmt: skip
        assert (trainer._student_capture is not None) is (fuse is None)
        trainer.train()
        states.append(({k: v.clone() for k, v in student.state_dict().items()}, trainer.state.log_history[0]))
    (fused, fused_log), (plain, plain_log) = states
    for name in ("loss", "loss_ce", "loss_kd"):
        assert fused_log[name] == pytest.approx(plain_log[name], rel=1e-5)
    assert not torch.equal(fused["lm_head.weight"], make(2, 2, seed=2).state_dict()["lm_head.weight"])
    for name in fused:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_seq2seq_trainer_refuses_plain_arguments_and_other_tasks(tmp_path):
    with pytest.raises(TypeError, match="must be a DistillationSeq2SeqArguments, got DistillationArguments"):
        DistillationSeq2SeqTrainer(model=tiny_t5(2, 2), teacher_model=tiny_t5(), args=arguments(tmp_path))
    from conftest import tiny_bert

    with pytest.raises(ValueError, match="the student is a BertForSequenceClassification"):
        DistillationSeq2SeqTrainer(model=tiny_bert(2), teacher_model=tiny_bert(4),
                                   args=arguments(tmp_path, DistillationSeq2SeqArguments))  # fmt: skip


def test_batches_without_labels_or_decoder_inputs_are_refused(tmp_path):
    trainer = DistillationTrainer(model=tiny_t5(2, 2), teacher_model=tiny_t5(), args=arguments(tmp_path, alpha=0.0))
    inputs = batch()
    inputs.pop("labels")
    with pytest.raises(ValueError, match="seq2seq distillation needs `labels`"):
        trainer.compute_loss(trainer.model, inputs)


def test_whisper_decoder_is_distilled_from_input_features(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=16, max_target_positions=32, pad_token_id=PAD,
                           bos_token_id=2, eos_token_id=EOS, decoder_start_token_id=2)  # fmt: skip
    teacher = WhisperForConditionalGeneration(config)
    student = build_student(teacher, num_layers=1)
    assert (len(student.model.encoder.layers), len(student.model.decoder.layers)) == (1, 1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=arguments(tmp_path))
    inputs = {"input_features": torch.randn(2, 8, 32), "labels": torch.tensor([[3, 4, 5, EOS], [6, 7, EOS, -100]])}
    loss = trainer.compute_loss(student, dict(inputs))
    torch.testing.assert_close(loss, reference_loss(student, teacher, inputs, 0.3, 0.7, 2.0), rtol=1e-5, atol=1e-6)


def test_seq2seq_training_resumes_from_a_checkpoint(tmp_path):
    def trainer(max_steps):
        args = arguments(tmp_path, DistillationSeq2SeqArguments, max_steps=max_steps, save_steps=1,
                         per_device_train_batch_size=4, learning_rate=1e-3)  # fmt: skip
        return DistillationSeq2SeqTrainer(model=tiny_t5(2, 2, seed=2), teacher_model=tiny_t5(seed=1), args=args,
                                          train_dataset=seq2seq_rows(8, 0), data_collator=pad_rows)  # fmt: skip

    straight = trainer(2)
    straight.train()
    resumed = trainer(2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert resumed.state.global_step == 2
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)  # the same weights as the uninterrupted run


def test_target_token_ids_outside_the_vocabulary_are_refused_before_training(tmp_path):
    rows = seq2seq_rows(4, 0).to_list()
    rows[2]["labels"] = [5, 99, EOS]
    args = arguments(tmp_path, max_steps=1, per_device_train_batch_size=4)
    trainer = DistillationTrainer(model=tiny_bart(2, 2), teacher_model=tiny_bart(), args=args,
                                  train_dataset=Dataset.from_list(rows), data_collator=pad_rows)  # fmt: skip
    with pytest.raises(ValueError, match=r"'labels' holds label values \[99\] outside the student's label set 0..47"):
        trainer.train()
    assert trainer.state.global_step == 0
