"""The README's promises: its drop-in example runs as written, and CI runs its install and test commands."""

import re
from pathlib import Path

from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_drop_in_example_runs_as_written(tmp_path, monkeypatch):
    diff = fenced("diff")[0]
    code = "\n".join(line[1:] for line in diff.splitlines() if not line.startswith("-"))
    monkeypatch.chdir(tmp_path)
    rows = Dataset.from_dict(random_rows(16, seed=3))
    accuracy = lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}  # noqa: E731
    namespace = dict(student=tiny_bert(2, seed=2), teacher=tiny_bert(4, seed=1), train=rows, val=rows,
                     tokenizer=None, compute_metrics=accuracy)  # fmt: skip
    # The example leaves the collator to the tokenizer; tiny models have none, so pass the test collator through.
    code = code.replace("compute_metrics=compute_metrics)", "compute_metrics=compute_metrics, data_collator=collator)")
    exec(code, namespace | {"collator": pad_collator})  # noqa: S102
    assert (tmp_path / "out" / "distillation_config.json").is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_official_script_swap_is_the_three_lines_that_work(tmp_path):
    from test_official_scripts import OFFICIAL_SCRIPT_FIELDS, _script_dataclass
    from transformers import HfArgumentParser, Trainer

    diff = fenced("diff")[1]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+")]
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-")]
    assert len(added) == 3 and len(removed) == 2
    model_fields, data_fields = OFFICIAL_SCRIPT_FIELDS["text-classification/run_glue.py"]
    namespace = {"HfArgumentParser": HfArgumentParser, "Trainer": Trainer,
                 "ModelArguments": _script_dataclass("ModelArguments", model_fields),
                 "DataTrainingArguments": _script_dataclass("DataTrainingArguments", data_fields)}  # fmt: skip
    exec("\n".join(added[:2]), namespace)  # noqa: S102  (the import, then the parser of run_glue.py)
    argv = ["--model_name_or_path", "t", "--output_dir", str(tmp_path), "--student_num_layers", "6"]
    args = namespace["parser"].parse_args_into_dataclasses(args=argv)[2]
    assert type(args).__name__ == "DistillationArguments" and args.student_num_layers == 6
    assert added[2] == "trainer = DistillationTrainer(" and namespace["DistillationTrainer"].__mro__[1] is Trainer


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [block.strip() for block in fenced("bash")[:2]]
    try_it, run_tests = commands
    install = try_it.rsplit(" && ", 1)[0]  # everything but the demo itself
    assert try_it.endswith("hf-distill-demo")
    assert install in ci
    assert run_tests in ci
