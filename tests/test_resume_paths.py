"""One path for resuming: the library (`train(resume_from_checkpoint=True)`) and the command (`hf-distill` on an
`--output_dir` holding a run) pick the same newest *complete* checkpoint and compare the same settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from _resume_run import build_trainer

from hf_distill import DistillationRecord, DistillationSettingError, DistillationTrainer
from hf_distill.command.output_dir import check_output_dir, check_resumable
from hf_distill.resume import check_resume_settings, missing_parts, resolve_checkpoint


def fake_checkpoint(folder: Path, step: int, without: str | None = None) -> Path:
    """A checkpoint folder as a save leaves it: state, weights, record; `without` names the part a cut save lacks."""
    folder.mkdir(parents=True)
    parts = {
        "trainer_state.json": json.dumps({"global_step": step}),
        "model.safetensors": "weights",
        "distillation_config.json": json.dumps({"temperature": 4.0, "student_num_layers": 2}),
    }
    for name, text in parts.items():
        if name == without:
            continue
        (folder / name).write_text(text)
    if without == "truncated trainer_state.json":  # killed while Trainer wrote it (it is not written atomically)
        (folder / "trainer_state.json").write_text('{"global_step": ')
    return folder


@pytest.mark.parametrize(
    ("without", "named"),
    [
        ("trainer_state.json", "trainer_state.json"),
        ("truncated trainer_state.json", "trainer_state.json"),
        ("model.safetensors", "the model weights"),
        ("distillation_config.json", "distillation_config.json"),
    ],
)
def test_library_and_command_skip_the_same_incomplete_checkpoint(tmp_path, caplog, without, named):
    out = tmp_path / "out"
    complete = fake_checkpoint(out / "checkpoint-4", 4)
    cut = fake_checkpoint(out / "checkpoint-8", 8, without=without)
    fake_checkpoint(out / "checkpoint-12-notes", 12)  # not a checkpoint-N name: never picked
    assert missing_parts(complete) == [] and missing_parts(cut) == [named]

    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        library = resolve_checkpoint(True, str(out))
        command = check_output_dir(str(out), overwrite=False, resume_from_checkpoint=None)
    assert library == command == str(complete)
    assert (
        caplog.text.count("Skipping incomplete checkpoint(s)") == 2
        and f"checkpoint-8 (missing {named})" in caplog.text
    )

    for refuse in (
        lambda: resolve_checkpoint(str(cut), str(out)),
        lambda: check_output_dir(str(out), False, str(cut)),
    ):
        with pytest.raises(ValueError, match=rf"checkpoint-8'? is incomplete \(missing or unreadable: {named}\)"):
            refuse()


def test_a_folder_with_only_incomplete_checkpoints(tmp_path):
    out = tmp_path / "out"
    fake_checkpoint(out / "checkpoint-2", 2, without="trainer_state.json")
    with pytest.raises(ValueError, match=r"holds no complete checkpoint-N folder \(incomplete: checkpoint-2\)"):
        resolve_checkpoint(True, str(out))
    with pytest.raises(ValueError, match=r"holds no hf-distill checkpoint .*only incomplete ones: checkpoint-2"):
        check_output_dir(str(out), overwrite=False, resume_from_checkpoint=None)


def test_library_and_command_compare_the_same_settings(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "checkpoint-4", 4)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    record = json.loads((checkpoint / "distillation_config.json").read_text())
    record["teacher_model"] = str(teacher)
    (checkpoint / "distillation_config.json").write_text(json.dumps(record))

    # the same folder named another way, and settings the checkpoint does not record: nothing to refuse
    same = {"temperature": 4.0, "student_num_layers": 2, "teacher_model": str(tmp_path / "." / "teacher"), "beta": 1}
    check_resumable(str(checkpoint), same)
    check_resume_settings(checkpoint, DistillationRecord(**same))

    other = {**same, "student_num_layers": 3}
    with pytest.raises(ValueError, match=r"student_num_layers: checkpoint 2, now 3.*--overwrite_output_dir"):
        check_resumable(str(checkpoint), other)
    with pytest.raises(DistillationSettingError, match=r"student_num_layers: checkpoint 2, now 3") as info:
        check_resume_settings(checkpoint, DistillationRecord(**other))
    assert info.value.settings == ("student_num_layers",) and isinstance(info.value, ValueError)


# ---- a save cut half-way, then resumed through the library ---------------------------------------------------


class SaveCut(RuntimeError):
    pass


def cut_save_at(monkeypatch, step: int) -> None:
    """Interrupt `_save_checkpoint` at `step` after the weights and the record are written (before optimizer,
    RNG state and trainer_state.json), as a crash in the middle of a save would."""
    original = DistillationTrainer._save_optimizer_and_scheduler

    def save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == step:
            assert (Path(output_dir) / "model.safetensors").is_file()
            raise SaveCut(f"save of {output_dir} cut")
        return original(self, output_dir)

    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", save_optimizer_and_scheduler)


def test_library_resumes_from_the_checkpoint_before_a_cut_save(tmp_path, monkeypatch, caplog):
    torch.set_num_threads(1)
    settings = dict(max_steps=4, save_steps=2, logging_steps=2)
    full = build_trainer(str(tmp_path / "full"), **settings)
    full.train()

    with monkeypatch.context() as patch:
        cut_save_at(patch, 4)
        with pytest.raises(SaveCut):
            build_trainer(str(tmp_path / "cut"), **settings).train()
    assert missing_parts(tmp_path / "cut" / "checkpoint-4") == ["trainer_state.json"]

    resumed = build_trainer(str(tmp_path / "cut"), **settings)
    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        resumed.train(resume_from_checkpoint=True)
    assert (
        "Skipping incomplete checkpoint(s)" in caplog.text
        and "checkpoint-4 (missing trainer_state.json)" in caplog.text
    )
    assert resumed.state.global_step == 4 and missing_parts(tmp_path / "cut" / "checkpoint-4") == []
    for name, value in full.model.state_dict().items():  # steps 3-4 redone from checkpoint-2: the same student
        assert torch.equal(resumed.model.state_dict()[name], value), name


# ---- the typed error the command reads instead of the message ------------------------------------------------


def test_refused_term_names_its_settings_and_the_command_turns_them_into_flags(tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from hf_distill import DistillationArguments
    from hf_distill.command.workflow import _trainer
    from hf_distill.tasks import SEQUENCE_CLASSIFICATION

    def deberta(layers: int) -> DebertaV2ForSequenceClassification:  # its relative attention cannot be recorded
        config = DebertaV2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                 vocab_size=64, max_position_embeddings=40, num_labels=2, relative_attention=True,
                                 pos_att_type=["c2p", "p2c"])  # fmt: skip
        return DebertaV2ForSequenceClassification(config)

    args = DistillationArguments(output_dir=str(tmp_path), gamma=0.4, relation_weight=0.0, report_to="none")
    with pytest.raises(DistillationSettingError, match="relative position attention") as info:
        DistillationTrainer(model=deberta(1), teacher_model=deberta(2), args=args)
    assert info.value.settings == ("gamma", "relation_weight") and info.value.setting == "gamma"
    assert "recipe='logits'" in str(info.value)  # the recipe that needs only the logits

    class Data:  # what `_trainer` reads of the prepared data and the metrics
        train = evaluation = collator = preprocess = None

    with pytest.raises(DistillationSettingError) as info:
        student, teacher = deberta(1), deberta(2)
        _trainer(DistillationTrainer, SEQUENCE_CLASSIFICATION, student, teacher, args, Data(), None, metrics=Data())
    message = str(info.value)
    assert "or use --recipe logits" in message
    assert "On the command line add --gamma 0 (" in message and "--relation_weight" not in message  # only what is on
