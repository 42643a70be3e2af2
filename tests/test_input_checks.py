"""Bad input is refused before the first training step, with a message naming the argument, the value and the fix.

(Argument values, layer maps, label counts and teacher-is-student are tested in test_args.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import VOCAB_SIZE, pad_collator, random_rows, tiny_bert
from datasets import Dataset
from transformers import HfArgumentParser

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.checks import check_dataset, parse_config_file


def make_args(tmp_path, **overrides) -> DistillationArguments:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, report_to="none")
    settings.update(overrides)
    return DistillationArguments(**settings)


def make_trainer(tmp_path, student=None, teacher=None, dataset=None, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        model=student if student is not None else tiny_bert(num_layers=2, seed=2),
        teacher_model=teacher if teacher is not None else tiny_bert(num_layers=4, seed=1),
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else Dataset.from_dict(random_rows(8, seed=3)),
        data_collator=pad_collator,
    )


def assert_refused_before_training(trainer: DistillationTrainer, *fragments: str) -> None:
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(ValueError) as info:
        trainer.train()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert trainer.state.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert not list(Path(trainer.args.output_dir).glob("checkpoint-*"))


# ---- the model pair ----------------------------------------------------------------------------------------


def test_swapped_id2label_refused(tmp_path):
    names = {0: "negative", 1: "positive"}
    teacher = tiny_bert(num_layers=4, id2label=names, label2id={v: k for k, v in names.items()})
    student = tiny_bert(num_layers=2, id2label={0: "positive", 1: "negative"})
    with pytest.raises(ValueError, match="id2label.*positive"):
        make_trainer(tmp_path, student=student, teacher=teacher)


def test_default_label_names_on_one_side_only_warn(tmp_path, caplog):
    teacher = tiny_bert(num_layers=4, id2label={0: "negative", 1: "positive"})
    make_trainer(tmp_path, teacher=teacher)  # student has LABEL_0/LABEL_1: unnamed, not contradictory
    assert "copy the teacher's id2label" in caplog.text


def test_one_label_rule_lenient_for_the_trainer_strict_for_the_command(caplog):
    from hf_distill.checks import check_same_labels

    named, unnamed = tiny_bert(num_layers=2, id2label={0: "neg", 1: "pos"}), tiny_bert(num_layers=2)
    check_same_labels(named, unnamed)  # the trainer: LABEL_0/LABEL_1 is unnamed, a warning
    assert "copy the teacher's id2label" in caplog.text
    with pytest.raises(ValueError, match=r"the student's labels \(id2label=\{0: 'neg', 1: 'pos'\}\) differ from"):
        check_same_labels(named, unnamed, strict=True)  # the command: a saved student naming other classes
    with pytest.raises(ValueError, match="num_labels=3 but the student has num_labels=2"):
        check_same_labels(unnamed, tiny_bert(num_layers=2, num_labels=3), strict=False)


def test_vocab_size_mismatch_refused(tmp_path):
    teacher = tiny_bert(num_layers=4)
    teacher.resize_token_embeddings(80)  # e.g. tokens added to the teacher's tokenizer after the student was built
    with pytest.raises(ValueError, match="vocab_size=80.*vocab_size=64"):
        make_trainer(tmp_path, teacher=teacher)


def _word_level_tokenizer(size: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": i for i in range(2, size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")))


def test_tokenizer_larger_than_embeddings_refused(tmp_path):
    tokenizer = _word_level_tokenizer(VOCAB_SIZE + 16)
    assert len(tokenizer) == VOCAB_SIZE + 16
    with pytest.raises(ValueError, match=r"processing_class.*80 tokens.*64 rows.*resize_token_embeddings"):
        DistillationTrainer(
            model=tiny_bert(num_layers=2), teacher_model=tiny_bert(num_layers=4), args=make_args(tmp_path),
            processing_class=tokenizer,
        )  # fmt: skip
    # the same tokenizer size as the embeddings is fine
    DistillationTrainer(
        model=tiny_bert(num_layers=2), teacher_model=tiny_bert(num_layers=4), args=make_args(tmp_path),
        processing_class=_word_level_tokenizer(VOCAB_SIZE),
    )  # fmt: skip


def test_token_ids_past_the_vocabulary_refused(tmp_path):
    rows = random_rows(8, seed=3)
    rows["input_ids"][5][2] = VOCAB_SIZE + 3
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(rows))
    assert_refused_before_training(trainer, "input_ids", f"..{VOCAB_SIZE + 3}", "64 rows", "tokenizer")


def test_gamma_on_relative_position_attention_refused_with_the_true_reason(tmp_path):
    # DeBERTa-v2 computes disentangled (relative position) attention in its own code, outside the attention interface.
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    def deberta(seed):
        torch.manual_seed(seed)
        config = DebertaV2Config(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64, num_labels=2,
                                 relative_attention=True, pos_att_type=["c2p", "p2c"])  # fmt: skip
        return DebertaV2ForSequenceClassification(config)

    with pytest.raises(ValueError, match="computes relative position attention in its own code.*gamma=0"):
        make_trainer(tmp_path, student=deberta(0), teacher=deberta(1), gamma=0.4)
    make_trainer(tmp_path, student=deberta(0), teacher=deberta(1), gamma=0.0)  # logits need no maps: fine


# ---- datasets ----------------------------------------------------------------------------------------------


def test_alpha_without_labels_refused_before_any_step(tmp_path):
    rows = random_rows(8, seed=3)
    del rows["label"]
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(rows), alpha=0.1)
    assert_refused_before_training(trainer, "alpha > 0", "no `labels`", "input_ids", "alpha=0")


def test_alpha_zero_trains_without_labels(tmp_path):
    rows = random_rows(8, seed=3)
    del rows["label"]
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(rows), alpha=0.0)
    trainer.train()
    assert trainer.state.global_step == 1


def test_labels_made_by_the_collator_count():
    # A language-modelling collator creates `labels` from `input_ids`: no label column, yet labels are there.
    rows = random_rows(4)
    del rows["label"]

    def lm_collator(features):
        batch = pad_collator(features)
        batch["labels"] = batch["input_ids"].clone()
        return batch

    dataset, models = Dataset.from_dict(rows), {"student": tiny_bert(2)}
    check_dataset(dataset, "train_dataset", models, require_labels=True, collate=lm_collator)
    with pytest.raises(ValueError, match="no `labels`"):
        check_dataset(dataset, "train_dataset", models, require_labels=True, collate=pad_collator)


def test_collator_check_leaves_random_state_alone():
    def random_collator(features):
        torch.rand(3)
        return pad_collator(features)

    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    check_dataset(Dataset.from_dict(random_rows(4)), "train_dataset", {}, require_labels=True, collate=random_collator)
    assert torch.equal(torch.rand(2), expected)


def test_empty_dataset_refused(tmp_path):
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(random_rows(8)).select([]))
    assert_refused_before_training(trainer, "train_dataset is empty (0 rows)")


def test_empty_eval_dataset_refused(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.eval_dataset = {"val": Dataset.from_dict(random_rows(8)).select([])}
    assert_refused_before_training(trainer, "eval_dataset['val'] is empty")


def test_label_outside_label_set_refused(tmp_path):
    rows = random_rows(16, seed=3)
    rows["label"][7] = 2
    rows["label"][9] = -100  # ignored labels are allowed
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(rows))
    assert_refused_before_training(trainer, "label values [2]", "0..1", "num_labels=2")


def test_label_check_sees_only_selected_rows(tmp_path):
    rows = random_rows(16, seed=3)
    rows["label"][7] = 5
    dataset = Dataset.from_dict(rows).select([i for i in range(16) if i != 7])  # the bad row is not in the view
    check_dataset(dataset, "train_dataset", {"student": tiny_bert(2)})
    with pytest.raises(ValueError, match=r"\[5\]"):
        check_dataset(Dataset.from_dict(rows), "train_dataset", {"student": tiny_bert(2)})


def test_string_labels_refused():
    rows = random_rows(4)
    rows["label"] = ["positive", "negative", "positive", "negative"]
    with pytest.raises(ValueError, match="strings.*label2id"):
        check_dataset(Dataset.from_dict(rows), "train_dataset", {"student": tiny_bert(2)})


def test_sequence_longer_than_position_embeddings_refused(tmp_path):
    rows = random_rows(8, seed=3)
    rows["input_ids"][4] = [2] + [7] * 68 + [3]  # 70 tokens; the tiny models have 64 positions
    trainer = make_trainer(tmp_path, dataset=Dataset.from_dict(rows))
    assert_refused_before_training(trainer, "row 4 has 70 tokens", "at most 64 positions", "max_length=64")


def test_roberta_position_offset_counted():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1)  # fmt: skip
    model = RobertaForSequenceClassification(config)  # positions start at padding_idx + 1: 64 usable
    fits = Dataset.from_dict({"input_ids": [[0] + [5] * 62 + [2]]})
    check_dataset(fits, "train_dataset", {"student": model})
    with pytest.raises(ValueError, match="65 tokens.*at most 64"):
        check_dataset(Dataset.from_dict({"input_ids": [[0] + [5] * 63 + [2]]}), "train_dataset", {"student": model})


# ---- config files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_mistyped_key_refused(tmp_path, suffix):
    path = tmp_path / f"distill{suffix}"
    settings = {"output_dir": str(tmp_path / "out"), "temprature": 2.0, "alpha": 0.2}
    path.write_text(json.dumps(settings))  # JSON is valid YAML
    parser = HfArgumentParser(DistillationArguments)
    parse = parser.parse_json_file if suffix == ".json" else parser.parse_yaml_file
    with pytest.raises(ValueError, match="temprature"):
        parse(path, allow_extra_keys=False)
    with pytest.raises(ValueError, match="'temprature' \\(did you mean 'temperature'\\?\\)"):
        parse_config_file(path)
    settings["temperature"] = settings.pop("temprature")
    path.write_text(json.dumps(settings))
    (args,) = parse_config_file(path)
    assert (args.temperature, args.alpha) == (2.0, 0.2)


def test_yaml_config_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"output_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    parser = HfArgumentParser(DistillationArguments)
    for parse in (parser.parse_yaml_file, parse_config_file):
        with pytest.raises(Exception, match="python/object/apply"):
            parse(path)
    assert not marker.exists()
