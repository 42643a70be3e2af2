"""Several processes and engines: DDP on CPU (gloo) gives the 1-process result; DeepSpeed/FSDP teacher preparation;
mixed precision keeps the loss terms in float32; `teacher_dtype`.

The multi-process tests launch `tests/distributed_worker.py` with torchrun / accelerate and compare what each rank
saw with a 1-process run of the same settings and global batch, made in this process.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset
from distributed_worker import NO_DROPOUT, train_once
from safetensors.torch import load_file
from transformers import HfArgumentParser

from hf_distill import DistillationArguments, DistillationTrainer, load_distillation_config, losses
from hf_distill.attention import AttentionRecorder
from hf_distill.engines import deepspeed_teacher_config, real_examples, resolve_teacher_dtype

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
EXAMPLES = REPO / "examples" / "distributed"
TERMS = ("loss", "loss_ce", "loss_kd", "loss_attn")
EVAL_TERMS = ("eval_loss", "eval_loss_ce", "eval_loss_kd", "eval_loss_attn", "eval_distillation_loss")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def launch(launcher: list[str], out: Path, names: list[str], world_size: int = 2) -> list[dict]:
    """Run the worker under `launcher`; return, per rank, {setting: what that rank reported}."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [*launcher, str(WORKER), str(out), *names]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return [{n: json.loads((out / f"{n}-rank{r}.json").read_text()) for n in names} for r in range(world_size)]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@functools.cache
def reference(name: str, out: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The same run in one process, without DeepSpeed / FSDP: (trained student weights, log history)."""
    trainer = train_once(name, Path(out), world_size=1, engine=False)
    student = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}, trainer.state.log_history


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reference"))


def assert_same_run(name, report, student_file, reference_dir, rtol=1e-5, atol=1e-6):
    expected_weights, expected_log = reference(name, reference_dir)
    trained = load_file(student_file) if student_file.suffix == ".safetensors" else torch.load(student_file)
    initial = tiny_bert(2, seed=2, **NO_DROPOUT).state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained), "training moved no weight"
    for key, value in expected_weights.items():
        torch.testing.assert_close(trained[key].float(), value, rtol=rtol, atol=atol, msg=f"{name}: {key}")
    log = report["log_history"]
    assert len(log) == len(expected_log)
    for got, want in zip(log, expected_log):
        for key in (*TERMS, *EVAL_TERMS):
            assert (key in got) == (key in want), f"{name}: {key} in one log and not the other"
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=max(rtol, 1e-5)), f"{name} step {want['step']}: {key}"


# ---- DDP on CPU (gloo), in the normal suite ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchrun_ranks(tmp_path_factory):
    """One torchrun launch (2 processes, gloo) for the DDP runs and the FSDP2 teacher check."""
    out = tmp_path_factory.mktemp("torchrun")
    return out, launch(TORCHRUN, out, ["full", "attention_only", "tokens", "fsdp2_teacher"])


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(torchrun_ranks, reference_dir):
    tmp_path, ranks = torchrun_ranks
    for name in ("full", "attention_only", "tokens"):
        head = "BertForTokenClassification" if name == "tokens" else "BertForSequenceClassification"
        for reports in ranks:
            report = reports[name]
            assert (report["world_size"], report["backend"]) == (2, "gloo")
            assert report["teacher_class"] == head and not report["teacher_is_ddp"]
            assert report["runner_class"] == head  # the teacher itself runs forward
            assert report["teacher_frozen"] and report["teacher_device"] == "cpu"
            assert report["student_wrapped_class"] == "DistributedDataParallel"
            assert_same_run(name, report, tmp_path / f"{name}-student.pt", reference_dir)
        per_rank = [[{k: v for k, v in e.items() if "loss" in k} for e in r[name]["log_history"]] for r in ranks]
        assert per_rank[0] == per_rank[1]  # every rank logs the same reduced values

    # artifacts: written by rank 0 only, once per save, atomically
    assert ranks[0]["full"]["artifact_writes"] == [str(tmp_path / "full" / "checkpoint-2"), str(tmp_path / "full")]
    assert ranks[1]["full"]["artifact_writes"] == []
    for folder in (tmp_path / "full" / "checkpoint-2", tmp_path / "full"):
        record = load_distillation_config(folder)
        assert record.total_train_batch_size == 8 and record.per_device_train_batch_size == 2
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_fsdp2_shards_the_teacher_and_keeps_its_outputs(torchrun_ranks):
    """accelerate's FSDP2 preparation applied to the teacher on 2 CPU ranks (gloo): sharded, same logits and maps."""
    _, ranks = torchrun_ranks
    for reports in ranks:
        report = reports["fsdp2_teacher"]
        assert report["block_class"] == "FSDPBertLayer"  # the teacher's blocks are their own FSDP units
        assert report["shared_plugin_untouched"]  # the student's plugin keeps its own wrap policy
        assert report["sharded_params"] > 0 and report["sharded_numel"] > 0.9 * report["num_parameters"]
        assert report["sharded_local_numel"] == pytest.approx(report["sharded_numel"] / 2, rel=0.02)  # half each
        assert report["logits_max_diff"] < 1e-5 and report["maps_max_diff"] < 1e-6


@pytest.mark.slow
def test_accelerate_launch_on_cpu_matches_one_process(tmp_path, reference_dir):
    """`accelerate launch --multi_gpu` runs torchrun underneath; without CUDA the ranks use gloo on CPU."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0"]  # fmt: skip
    ranks = launch(launcher, tmp_path, ["attention_only"])
    for reports in ranks:
        report = reports["attention_only"]
        assert (report["world_size"], report["backend"]) == (2, "gloo")
        assert report["student_wrapped_class"] == "DistributedDataParallel" and not report["teacher_is_ddp"]
        assert_same_run("attention_only", report, tmp_path / "attention_only-student.pt", reference_dir)


def test_evaluation_counts_no_padding_example_twice():
    """accelerate repeats examples to fill the last batch on every rank; the term sums must drop them."""

    def accelerator(rank, end, remainder, processes=2):
        state = SimpleNamespace(end_of_dataloader=end, remainder=remainder)
        return SimpleNamespace(gradient_state=state, num_processes=processes, process_index=rank)

    # 7 examples, 2 per rank: the last global batch holds 3 real examples, the 4th is a repeat.
    assert [real_examples(accelerator(r, True, 3), 2) for r in (0, 1)] == [2, 1]
    assert [real_examples(accelerator(r, True, 1), 2) for r in (0, 1)] == [1, 0]
    assert [real_examples(accelerator(r, False, 3), 2) for r in (0, 1)] == [2, 2]  # not the last batch
    assert real_examples(accelerator(1, True, 0), 2) == 2  # the set splits evenly
    assert real_examples(accelerator(1, True, -1), 2) == 2  # unknown length: nothing to drop
    assert real_examples(accelerator(0, True, 3, processes=1), 2) == 2


def test_attention_only_loss_gives_every_student_parameter_a_gradient(tmp_path):
    """With alpha = beta = 0 the head is not in the loss; DDP needs a gradient for it anyway (PITFALLS #7)."""
    args = DistillationArguments(output_dir=str(tmp_path), alpha=0.0, beta=0.0, gamma=1.0, use_cpu=True, report_to=[])
    student = tiny_bert(2, seed=2, **NO_DROPOUT)
    trainer = DistillationTrainer(model=student, teacher_model=tiny_bert(4, seed=1, **NO_DROPOUT), args=args)
    batch = pad_collator([{"input_ids": i, "label": y} for i, y in zip(*random_rows(6, seed=7).values())])
    student.train()
    loss = trainer.compute_loss(student, batch, num_items_in_batch=6)
    loss.backward()
    missing = [name for name, p in student.named_parameters() if p.grad is None]
    assert missing == []
    assert torch.count_nonzero(student.classifier.weight.grad) == 0  # a zero gradient, the loss is unchanged
    assert torch.count_nonzero(student.bert.encoder.layer[0].attention.self.query.weight.grad) > 0
    assert loss.item() == pytest.approx(trainer._pop_term_means("train")["loss_attn"], rel=1e-6)


# ---- DeepSpeed ----------------------------------------------------------------------------------------------------


def test_deepspeed_teacher_config_keeps_zero3_and_turns_lower_stages_into_zero0():
    run = json.loads((EXAMPLES / "deepspeed_zero2.json").read_text())
    run["optimizer"] = {"type": "AdamW", "params": {"lr": "auto"}}
    run["scheduler"] = {"type": "WarmupLR"}
    run["train_batch_size"] = 8  # filled for another world size: replaced, DeepSpeed would reject it
    before = json.dumps(run, sort_keys=True)
    config = deepspeed_teacher_config(run, hidden_size=64, micro_batch_size=4, gradient_accumulation_steps=2,
                                      world_size=2, mixed_precision="bf16")  # fmt: skip
    assert json.dumps(run, sort_keys=True) == before  # the run's own config is left alone
    assert config["zero_optimization"] == {"stage": 0}
    assert "optimizer" not in config and "scheduler" not in config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 2)
    assert config["train_batch_size"] == 16
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert "gradient_clipping" not in config  # an "auto" with nothing to fill it: DeepSpeed's default

    run3 = json.loads((EXAMPLES / "deepspeed_zero3.json").read_text())
    run3["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    run3["zero_optimization"]["offload_param"] = {"device": "cpu"}
    run3["zero_optimization"]["reduce_bucket_size"] = 1000  # set by the user: kept
    zero = deepspeed_teacher_config(run3, hidden_size=64)["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"] == {"device": "cpu"} and "offload_optimizer" not in zero
    assert zero["reduce_bucket_size"] == 1000
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
    assert zero["stage3_param_persistence_threshold"] == 640
    assert not any(value == "auto" for value in zero.values())


def engine_accelerator(distributed_type, **state):
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=getattr(DistributedType, distributed_type), state=SimpleNamespace(**state),
                           device=torch.device("cpu"), num_processes=1, is_fsdp2=False)  # fmt: skip


def test_teacher_goes_through_deepspeed_initialize_and_conflicts_fail_at_start(tmp_path, monkeypatch):
    """With a stand-in `deepspeed` module: what reaches deepspeed.initialize, and the start-up errors."""
    from hf_distill.engines import prepare_teacher

    calls = []

    def initialize(model, config):
        calls.append(config)
        return SimpleNamespace(module=model, eval=lambda: None), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", SimpleNamespace(initialize=initialize))
    run_config = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "optimizer": {"type": "AdamW"}}
    plugin = SimpleNamespace(deepspeed_config=run_config)
    accelerator = engine_accelerator("DEEPSPEED", deepspeed_plugin=plugin)
    args = DistillationArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True)
    teacher = tiny_bert(4, seed=1).train()
    engine = prepare_teacher(teacher, accelerator, args)
    assert engine.module is teacher and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert calls[0]["zero_optimization"] == {"stage": 0} and "optimizer" not in calls[0]
    assert calls[0]["train_batch_size"] == 4

    args.teacher_dtype = "float16"  # the DeepSpeed config says bf16
    with pytest.raises(ValueError, match="teacher_dtype='float16'.*bf16/fp16 section"):
        prepare_teacher(tiny_bert(4, seed=1), accelerator, args)
    assert len(calls) == 1  # failed before initialising anything

    with pytest.raises(ValueError, match="FSDP2 only.*fsdp_version: 2"):
        prepare_teacher(tiny_bert(4, seed=1), engine_accelerator("FSDP", fsdp_plugin=None), args)


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_teacher_through_deepspeed(tmp_path, reference_dir):
    """ZeRO-2: the teacher is a ZeRO-0 replica; ZeRO-3: loaded partitioned (zero.Init) and kept partitioned."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    ranks = launch(TORCHRUN, tmp_path, ["zero2", "zero3"])
    for reports in ranks:
        for name, stage in (("zero2", 0), ("zero3", 3)):
            report = reports[name]
            assert report["distributed_type"] == "DistributedType.DEEPSPEED"
            assert report["runner_class"] == "DeepSpeedEngine" and report["teacher_zero_stage"] == stage
            assert report["teacher_class"] == "BertForSequenceClassification" and report["teacher_frozen"]
            assert report["teacher_num_parameters"] == sum(p.numel() for p in tiny_bert(4).parameters())
            assert_same_run(name, report, tmp_path / f"{name}-student.pt", reference_dir, rtol=1e-4, atol=1e-5)
        zero3 = reports["zero3"]
        assert zero3["teacher_managed_by_zero3"]
        assert zero3["teacher_local_numel"] < 0.6 * zero3["teacher_num_parameters"]  # about half on each of 2 ranks


# ---- FSDP and the GPU runs (need CUDA) ----------------------------------------------------------------------------


def gpu_launcher() -> tuple[list[str], int]:
    processes = min(2, torch.cuda.device_count())
    return [*TORCHRUN[:-1], str(processes)], processes


@pytest.mark.gpu
@needs_cuda
def test_fsdp2_teacher_is_sharded_and_matches_one_process(tmp_path, reference_dir):
    launcher, processes = gpu_launcher()
    ranks = launch(launcher, tmp_path, ["fsdp2"], world_size=processes)
    for reports in ranks:
        report = reports["fsdp2"]
        assert report["distributed_type"] == "DistributedType.FSDP"
        assert report["teacher_all_dtensor"] and not report["teacher_is_ddp"]
        if processes > 1:
            assert report["teacher_local_numel"] < 0.6 * report["teacher_num_parameters"]
        assert_same_run("fsdp2", report, tmp_path / "fsdp2-student.pt", reference_dir, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_deepspeed_zero3_on_gpu(tmp_path, reference_dir):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    launcher, processes = gpu_launcher()
    ranks = launch(launcher, tmp_path, ["zero3"], world_size=processes)
    for reports in ranks:
        report = reports["zero3"]
        assert report["runner_class"] == "DeepSpeedEngine" and report["teacher_zero_stage"] == 3
        assert_same_run("zero3", report, tmp_path / "zero3-student.pt", reference_dir, rtol=1e-3, atol=1e-4)


def test_example_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"accelerate_ddp.yaml": "MULTI_GPU", "accelerate_deepspeed_zero2.yaml": "DEEPSPEED",
                "accelerate_deepspeed_zero3.yaml": "DEEPSPEED", "accelerate_fsdp2.yaml": "FSDP"}  # fmt: skip
    for file, distributed_type in expected.items():
        config = load_config_from_file(str(EXAMPLES / file))
        assert config.distributed_type == distributed_type, file
        deepspeed_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
        if deepspeed_file:
            assert (REPO / deepspeed_file).is_file(), f"{file} names a missing {deepspeed_file}"
    assert load_config_from_file(str(EXAMPLES / "accelerate_fsdp2.yaml")).fsdp_config["fsdp_version"] == 2
    args = DistillationArguments(output_dir="unused", fsdp=True, fsdp_config=str(EXAMPLES / "fsdp2.json"))
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "BertLayer"


# ---- mixed precision and teacher_dtype ----------------------------------------------------------------------------


def a_batch(n=6, seed=7):
    return pad_collator([{"input_ids": i, "label": y} for i, y in zip(*random_rows(n, seed=seed).values())])


def test_terms_stay_float32_under_bf16_autocast_and_match_float32():
    teacher, student = tiny_bert(4, seed=1, **NO_DROPOUT).eval(), tiny_bert(2, seed=2, **NO_DROPOUT).eval()
    batch = a_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s_rec, t_rec = AttentionRecorder(student, [0, 1]), AttentionRecorder(teacher, [1, 3])

    def terms(autocast: bool):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with s_rec.recording():
                s_logits = student(**inputs).logits
            with t_rec.recording():
                t_logits = teacher(**inputs).logits
            mask = batch["attention_mask"]
            s_maps, t_maps = s_rec.attention_maps(), t_rec.attention_maps()
            kd = losses.soft_label_loss(s_logits, t_logits, 2.0)
            attn = [losses.attention_kl_loss(s, t, mask) for s, t in zip(s_maps, t_maps)]
            return s_logits.dtype, s_maps, kd, torch.stack(attn).mean()

    logits_dtype, maps, kd, attn = terms(autocast=True)
    assert logits_dtype == torch.bfloat16  # autocast really ran the model in bf16
    assert all(m.dtype == torch.float32 for m in maps) and kd.dtype == attn.dtype == torch.float32
    _, _, kd32, attn32 = terms(autocast=False)
    assert kd.item() == pytest.approx(kd32.item(), rel=5e-2)
    assert attn.item() == pytest.approx(attn32.item(), rel=5e-2)


def make_trainer(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2, logging_steps=1,
                    report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, gamma=2.0)  # fmt: skip
    args = DistillationArguments(**{**settings, **overrides})
    return DistillationTrainer(
        model=tiny_bert(2, seed=2, **NO_DROPOUT), teacher_model=tiny_bert(4, seed=1, **NO_DROPOUT), args=args,
        train_dataset=Dataset.from_dict(random_rows(16, seed=3)), data_collator=pad_collator,
    )  # fmt: skip


def test_bf16_training_logs_float32_terms_close_to_float32_training(tmp_path):
    logs = {}
    for bf16 in (False, True):
        trainer = make_trainer(tmp_path / str(bf16), bf16=bf16)
        trainer.train()
        logs[bf16] = trainer.state.log_history[0]  # the first step: computed with the initial weights
    for key in TERMS:
        assert logs[True][key] == pytest.approx(logs[False][key], rel=5e-2), key


def test_teacher_dtype_bfloat16_halves_teacher_memory_and_keeps_the_loss(tmp_path):
    def teacher_bytes(model):
        return sum(p.numel() * p.element_size() for p in model.parameters())

    full = make_trainer(tmp_path / "fp32")
    half = make_trainer(tmp_path / "bf16", teacher_dtype="bfloat16")
    assert {p.dtype for p in half.teacher_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}  # the student is untouched
    assert teacher_bytes(half.teacher_model) * 2 == teacher_bytes(full.teacher_model)
    batch = a_batch()
    with torch.no_grad():
        loss32 = full.compute_loss(full.model.train(), batch)
        loss16 = half.compute_loss(half.model.train(), batch)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=5e-2)
    half.train()
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in half.state.log_history if "loss" in entry)


def test_teacher_dtype_resolution_and_errors(tmp_path):
    assert resolve_teacher_dtype(None, "bf16") is None
    assert resolve_teacher_dtype("auto", "bf16") == torch.bfloat16
    assert resolve_teacher_dtype("auto", "fp16") == torch.float16
    assert resolve_teacher_dtype("auto", "no") is None
    assert resolve_teacher_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="teacher_dtype.*'half'"):
        DistillationArguments(output_dir=str(tmp_path), teacher_dtype="half")
    (args,) = HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--teacher_dtype", "bfloat16"]
    )
    assert args.teacher_dtype == "bfloat16"
    with pytest.raises(SystemExit):  # argparse rejects a value outside the choices
        HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--teacher_dtype", "int8"]
        )
