"""Artifacts survive a kill mid-write; the teacher is loaded without running code from its files."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.trainer import load_teacher

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hf_distill"

# Imports this checkout's hf_distill.artifacts (it needs the term registry for its loss formula, so not on its own),
# writes the old file, then starts writing the new one and SIGKILLs itself at the chosen point in `atomic_write_json`.
_CHILD = r"""
import os, signal, sys, types
sys.path.insert(0, os.path.dirname(os.path.dirname(sys.argv[1])))
from hf_distill import artifacts
target, point = sys.argv[2], sys.argv[3]
artifacts.atomic_write_json(target, {"version": "old", "rows": list(range(10))})

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class HalfWriter:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)
    def write(self, text):
        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        die()
    def __getattr__(self, name):
        return getattr(self.handle, name)

def replace_then_die(src, dst):
    os.replace(src, dst)
    die()

patched = {
    "write": {"fdopen": lambda fd, *a, **k: HalfWriter(os.fdopen(fd, *a, **k))},
    "fsync": {"fsync": lambda fd: die()},
    "replace": {"replace": replace_then_die},
}[point]
artifacts.os = types.SimpleNamespace(**{**vars(os), **patched})
artifacts.atomic_write_json(target, {"version": "new", "rows": list(range(100_000))})
"""


@pytest.mark.parametrize(("point", "survivor"), [("write", "old"), ("fsync", "old"), ("replace", "new")])
def test_kill_during_atomic_write_leaves_old_or_new_file(tmp_path, point, survivor):
    target = tmp_path / "distillation_config.json"
    result = subprocess.run([sys.executable, "-c", _CHILD, str(PACKAGE / "artifacts.py"), str(target), point],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    data = json.loads(target.read_text())  # whole, never truncated
    assert data["version"] == survivor
    assert len(data["rows"]) == (10 if survivor == "old" else 100_000)


_WRITERS = {"write_text", "write_bytes", "dump"}  # Path.write_*, json.dump / yaml.dump into an open file


def _non_atomic_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        mode = node.args[1] if name == "open" and len(node.args) > 1 else None
        mode = next((k.value for k in node.keywords if k.arg == "mode"), mode) if name == "open" else None
        writes_file = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        if name in _WRITERS or writes_file:
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


def test_package_writes_files_only_through_atomic_helpers():
    """JSON, reports and cards must go through `artifacts.atomic_write_text`/`atomic_write_json`."""
    offenders = [hit for file in sorted(PACKAGE.rglob("*.py")) if file.name != "artifacts.py"
                 for hit in _non_atomic_writes(file)]  # fmt: skip
    assert not offenders, "non-atomic file writes (use hf_distill.artifacts.atomic_write_text):\n" + "\n".join(
        offenders
    )


def test_non_atomic_write_detector_finds_writes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("open(p, 'w')\nPath(p).write_text(s)\njson.dump(d, f)\nopen(p)\njson.dumps(d)\n")
    assert [hit.split()[0] for hit in _non_atomic_writes(sample)] == ["sample.py:1", "sample.py:2", "sample.py:3"]


# ---- safe loading of the teacher -----------------------------------------------------------------------------


def _args(tmp_path, **overrides) -> DistillationArguments:
    return DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", **overrides)


def _remote_code_teacher(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    config = {
        "model_type": "evil-bert",
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForSequenceClassification": "modeling_evil.EvilModel"},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code)
    return folder


def test_teacher_remote_code_not_run_by_default(tmp_path):
    marker = tmp_path / "code_ran"
    folder = _remote_code_teacher(tmp_path / "teacher", marker)
    assert not _args(tmp_path).teacher_trust_remote_code
    with pytest.raises(ValueError, match="trust_remote_code"):
        DistillationTrainer(model=tiny_bert(num_layers=2), teacher_model=str(folder), args=_args(tmp_path))
    assert not marker.exists()


def test_trust_remote_code_reaches_from_pretrained(tmp_path, monkeypatch):
    import transformers

    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs, name=name)
        return tiny_bert(num_layers=4, seed=1)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fake_from_pretrained)
    DistillationTrainer(model=tiny_bert(num_layers=2), teacher_model="some/teacher",
                        args=_args(tmp_path, teacher_trust_remote_code=True))  # fmt: skip
    assert seen["name"] == "some/teacher" and seen["trust_remote_code"] is True and seen["weights_only"] is True


def test_safetensors_preferred_over_pickle(tmp_path):
    teacher = tiny_bert(num_layers=4, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    (tmp_path / "teacher" / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # never opened
    loaded = load_teacher(str(tmp_path / "teacher"), like=tiny_bert(num_layers=2))
    for (name, expected), got in zip(teacher.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(expected, got), name


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_teacher_weights_cannot_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "teacher"
    tiny_bert(num_layers=4, seed=1).config.save_pretrained(folder)
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing ran
        load_teacher(str(folder), like=tiny_bert(num_layers=2))
    assert not marker.exists()


def test_loaded_teacher_trains(tmp_path):
    tiny_bert(num_layers=4, seed=1).save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(
        model=tiny_bert(num_layers=2), teacher_model=str(tmp_path / "teacher"),
        args=_args(tmp_path, max_steps=1, per_device_train_batch_size=4),
        train_dataset=Dataset.from_dict(random_rows(8)), data_collator=pad_collator,
    )  # fmt: skip
    trainer.train()
    assert trainer.teacher_name_or_path == str(tmp_path / "teacher")
    assert not trainer.teacher_model.training and not any(p.requires_grad for p in trainer.teacher_model.parameters())
