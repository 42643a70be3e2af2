"""What the performance work promises: the teacher runs under the run's mixed precision, like the student."""

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

from hf_distill import DistillationArguments, DistillationTrainer


@pytest.mark.parametrize("bf16", [False, True])
def test_teacher_forward_uses_the_same_autocast_as_the_student(tmp_path, bf16):
    teacher, student = tiny_bert(4, seed=1), tiny_bert(2, seed=2)
    dtypes = {}
    for name, model in (("teacher", teacher), ("student", student)):
        model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
            lambda module, args, output, name=name: dtypes.__setitem__(name, output.dtype)
        )
    args = DistillationArguments(
        output_dir=str(tmp_path), bf16=bf16, use_cpu=True, max_steps=1, per_device_train_batch_size=4, report_to=[],
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_dict(random_rows(8)),
        data_collator=pad_collator,
    )  # fmt: skip
    trainer.train()
    expected = torch.bfloat16 if bf16 else torch.float32
    assert dtypes == {"teacher": expected, "student": expected}
    assert teacher.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32  # weights untouched
