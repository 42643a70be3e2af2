"""Pushing to the Hub (network stood in for at the `huggingface_hub.HfApi` boundary), the token, and reading back."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import transformers
from conftest import pad_collator, random_rows, tiny_bert, wordpiece_tokenizer
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModelForSequenceClassification

from hf_distill import DistillationArguments, DistillationTrainer, load_distillation_config

TOKEN = "hf_DoNotLeakThisToken0123456789abcdef"
REPO = "someone/tiny-student"


class FakeHub:
    """Records what `HfApi.create_repo` / `upload_folder` would send; `upload_folder` lists files as the Hub client
    does (its folder minus `ignore_patterns` and `.git` / `.cache/huggingface`) and snapshots README.md."""

    def __init__(self, monkeypatch):
        self.repos, self.uploads = [], []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, token=None, **kwargs):
        self.repos.append({"repo_id": repo_id, "token": token})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, token=None, run_as_future=False, **kwargs):
        folder = Path(folder_path)
        ignore = list(kwargs.get("ignore_patterns") or []) + [".git", ".git/*", ".cache/huggingface/*"]
        names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        files = set(filter_repo_objects(names, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=ignore))
        readme = (folder / "README.md").read_text() if "README.md" in files else None
        self.uploads.append({"repo_id": repo_id, "token": token, "files": files, "readme": readme, **kwargs})
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future
        return f"https://huggingface.co/{repo_id}/commit/0"


def _trainer(output_dir, teacher, student, **overrides) -> DistillationTrainer:
    settings = dict(max_steps=4, per_device_train_batch_size=8, save_strategy="no", report_to="none")
    args = DistillationArguments(output_dir=str(output_dir), disable_tqdm=True, use_cpu=True, **(settings | overrides))
    train = Dataset.from_dict(random_rows(32, seed=3))
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=pad_collator
    )


def test_push_to_hub_sends_exactly_the_expected_files_and_keeps_the_token_private(
    tmp_path, monkeypatch, caplog, capsys
):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "out"
    tokenizer = wordpiece_tokenizer(tmp_path, [f"w{i}" for i in range(59)])
    tokenizer.save_pretrained(tmp_path / "tokenizer_alone")
    tokenizer_files = {p.name for p in (tmp_path / "tokenizer_alone").iterdir()}

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.enable_propagation()  # let caplog see transformers' own logs too
    transformers.utils.logging.set_verbosity_debug()
    try:
        with caplog.at_level(logging.DEBUG):
            trainer = _trainer(
                out,
                tiny_bert(num_layers=4, seed=1),
                tiny_bert(num_layers=2, seed=2),
                push_to_hub=True,
                hub_model_id=REPO,
                hub_token=TOKEN,
                save_strategy="steps",
                save_steps=2,
            )
            trainer.processing_class = tokenizer
            trainer.train()
            # What the hf-distill command writes after training (issue 3), plus files that must not travel.
            (out / "report.json").write_text(json.dumps({"student_after": {"accuracy": 0.75}, "speedup": 1.8}))
            (out / "report.md").write_text("# report\n")
            (out / "training_curves.png").write_bytes(b"\x89PNG\r\n")
            (out / "_scratch.txt").write_text("private notes")
            trainer.push_to_hub()
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.disable_propagation()

    assert hub.repos == [{"repo_id": REPO, "token": TOKEN}]
    *checkpoint_pushes, final = hub.uploads
    assert final["repo_id"] == REPO and final["token"] == TOKEN and not final.get("path_in_repo")
    model_files = {"config.json", "model.safetensors", "training_args.bin"}
    ours = {"README.md", "distillation_config.json", "training_history.json"}
    report_files = {"report.json", "report.md", "training_curves.png"}
    expected = model_files | tokenizer_files | ours | report_files
    assert final["files"] == expected

    # The card sent is ours (not Trainer's generic one) and already reads the report.
    card = ModelCard(final["readme"])
    assert "hf-distill" in card.data.tags and "generated_from_trainer" not in card.data.tags
    assert "**1.80x**" in card.text and f'from_pretrained("{REPO}")' in card.text

    # Pushes during training (hub_strategy="every_save") carry the card and the distillation files too.
    assert [p["token"] for p in checkpoint_pushes] == [TOKEN, TOKEN]
    for push in checkpoint_pushes:
        assert {"README.md", "distillation_config.json", "training_history.json"} <= push["files"]

    # The token is in no file written to disk (training_args.bin included), no log record and not the card.
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert caplog.records and TOKEN not in caplog.text
    printed = capsys.readouterr()
    assert "'train_loss'" in printed.out and TOKEN not in printed.out + printed.err
    assert TOKEN not in final["readme"]
    saved_args = torch.load(out / "training_args.bin", weights_only=False)
    assert saved_args.hub_token is None and trainer.args.hub_token == TOKEN and saved_args.temperature == 4.0


def test_saved_student_reloads_with_from_pretrained(tmp_path):
    trainer = _trainer(tmp_path / "out", tiny_bert(num_layers=4, seed=1), tiny_bert(num_layers=2, seed=2))
    trainer.train()
    trainer.save_model()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    batch = pad_collator([{"input_ids": ids} for ids in random_rows(4, seed=9)["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits)
    assert reloaded.config.num_hidden_layers == 2
    assert (tmp_path / "out" / "README.md").is_file()


def test_distilling_a_distilled_student_records_the_chain(tmp_path):
    first = _trainer(tmp_path / "b", tiny_bert(num_layers=4, seed=1), tiny_bert(num_layers=2, seed=2))
    first.model.config._name_or_path = ""  # a fresh student has no name; the teacher gets one below
    first.teacher_name_or_path = "org/base-model"
    first.train()
    first.save_model()
    b_params = sum(p.numel() for p in first.model.parameters())

    # The distilled student becomes the teacher, given by path (so load_teacher reads it back).
    second = _trainer(tmp_path / "c", str(tmp_path / "b"), tiny_bert(num_layers=1, seed=3), temperature=3.0)
    second.train()
    second.save_model()

    record = load_distillation_config(tmp_path / "c")
    assert record.teacher_model == str(tmp_path / "b")
    assert record.teacher_num_parameters == b_params
    (step,) = record.teacher_lineage
    assert step["model"] == str(tmp_path / "b") and step["teacher_model"] == "org/base-model"
    assert step["student_num_parameters"] == b_params and step["temperature"] == 4.0
    card = ModelCard.load(tmp_path / "c" / "README.md")
    assert card.data.base_model is None  # the immediate teacher is a local folder
    assert f"Chain: `c` <- `{tmp_path / 'b'}` <- `org/base-model`" in card.text

    # A third generation carries the whole chain, nearest teacher first.
    third = _trainer(tmp_path / "d", str(tmp_path / "c"), tiny_bert(num_layers=1, seed=4), max_steps=1)
    third.train()
    third.save_model()
    chain = [s["model"] for s in load_distillation_config(tmp_path / "d").teacher_lineage]
    assert chain == [str(tmp_path / "c"), str(tmp_path / "b")]


def test_corrupt_teacher_config_warns_and_records_no_lineage(tmp_path, caplog):
    teacher = tiny_bert(num_layers=2, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    (tmp_path / "teacher" / "distillation_config.json").write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="hf_distill.card"):
        trainer = _trainer(tmp_path / "out", str(tmp_path / "teacher"), tiny_bert(num_layers=1, seed=2))
    assert trainer.distillation_record().teacher_lineage == []
    assert "lineage not recorded" in caplog.text


@pytest.mark.parametrize("name, expected", [("org/model", True), ("bert-base-uncased", True), ("/abs/path", False)])
def test_hub_ids_and_local_paths(tmp_path, name, expected):
    from hf_distill.card import is_hub_id

    assert is_hub_id(name) is expected
    assert is_hub_id(str(tmp_path)) is False  # an existing folder is local even when it parses as an id
