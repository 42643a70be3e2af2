"""`recipe=...` fills the loss settings left unset, explicit values win, and the choice is recorded."""

import pytest
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset
from transformers import HfArgumentParser

from hf_distill import DistillationArguments, DistillationTrainer, load_distillation_config

# Written from the papers (see docs/losses.md), not from hf_distill/recipes.py.
EXPECTED = {
    # The quality study's best (docs/benchmarks.md): MiniLM's attention KL and value relation, soft targets at T=1.
    "recommended": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=1.0, attention_loss="kl", hidden_weight=0.0,
                        relation_weight=1.0, relation_loss="value"),
    # Its best from the logits alone: soft targets at T=2, no hard labels.
    "logits": dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0, hidden_weight=0.0, relation_weight=0.0),
    "seed": dict(temperature=4.0, alpha=0.1, beta=0.5, gamma=0.4, attention_loss="mse", hidden_weight=0.0,
                 relation_weight=0.0),
    "hinton": dict(temperature=4.0, alpha=0.1, beta=0.9, gamma=0.0, hidden_weight=0.0, relation_weight=0.0),
    "distilbert": dict(temperature=2.0, alpha=2.0, beta=5.0, gamma=0.0, hidden_weight=1.0, hidden_loss="cosine",
                       relation_weight=0.0),
    "tinybert": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=1.0, attention_loss="score_mse", hidden_weight=1.0,
                     hidden_loss="mse", relation_weight=0.0),
    "minilm": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=1.0, attention_loss="kl", hidden_weight=0.0,
                   relation_weight=1.0, relation_loss="value"),
    "minilmv2": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0, hidden_weight=0.0, relation_weight=1.0,
                     relation_loss="qkv"),
}  # fmt: skip


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_each_recipe_sets_the_papers_settings(tmp_path, recipe):
    args = DistillationArguments(output_dir=str(tmp_path), recipe=recipe)
    assert {k: getattr(args, k) for k in EXPECTED[recipe]} == EXPECTED[recipe]


def test_without_a_recipe_the_defaults_are_the_seed():
    args = DistillationArguments(output_dir="run")
    assert {k: getattr(args, k) for k in EXPECTED["seed"]} == EXPECTED["seed"]
    assert args.recipe is None


def test_explicit_values_win_even_when_they_equal_the_library_default(tmp_path):
    args = DistillationArguments(output_dir=str(tmp_path), recipe="tinybert", temperature=4.0, gamma=0.4)
    assert (args.temperature, args.gamma, args.beta, args.attention_loss) == (4.0, 0.4, 1.0, "score_mse")


def test_recipe_from_the_command_line_with_an_override():
    (args,) = HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(
        ["--output_dir", "run", "--recipe", "distilbert", "--alpha", "0.5", "--report_to", "none"]
    )
    assert (args.recipe, args.alpha, args.beta, args.hidden_loss) == ("distilbert", 0.5, 5.0, "cosine")


def test_the_command_defaults_to_the_recommended_recipe_and_seed_restores_the_notebook(tmp_path):
    from hf_distill.command.cli import parse_args

    for name in ("t.tsv", "v.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\ngood\t1\n")
    base = ["--output_dir", str(tmp_path / "run"), "--train_file", str(tmp_path / "t.tsv"), "--validation_file",
            str(tmp_path / "v.tsv"), "--report_to", "none"]  # fmt: skip
    training_args = parse_args(base)[-1]
    assert training_args.recipe == "recommended"
    assert {k: getattr(training_args, k) for k in EXPECTED["recommended"]} == EXPECTED["recommended"]
    training_args = parse_args([*base, "--recipe", "seed"])[-1]
    assert {k: getattr(training_args, k) for k in EXPECTED["seed"]} == EXPECTED["seed"]


def test_resume_compares_the_values_not_the_recipe_name(tmp_path):
    import json

    from hf_distill.command.cli import check_resumable

    recorded = DistillationArguments(output_dir=str(tmp_path)).distillation_settings()  # recipe None: the seed's
    (tmp_path / "distillation_config.json").write_text(json.dumps(recorded))
    check_resumable(str(tmp_path), DistillationArguments(output_dir="x", recipe="seed").distillation_settings())
    with pytest.raises(ValueError, match=r"temperature: checkpoint 4.0, now 1.0"):
        check_resumable(
            str(tmp_path), DistillationArguments(output_dir="x", recipe="recommended").distillation_settings()
        )


def test_unknown_recipe_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"`recipe` must be one of recommended, logits, seed, hinton, distilbert, "):
        DistillationArguments(output_dir=str(tmp_path), recipe="bert-of-theseus")


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_each_recipe_trains_and_is_recorded(tmp_path, recipe):
    teacher, student = tiny_bert(4, seed=1), tiny_bert(2, seed=2)
    run = dict(max_steps=2, logging_steps=1, per_device_train_batch_size=8, report_to=[], use_cpu=True)
    args = DistillationArguments(output_dir=str(tmp_path / "out"), recipe=recipe, save_strategy="no", **run)
    data = Dataset.from_dict(random_rows(16, seed=3))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  data_collator=pad_collator)  # fmt: skip
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    weights = {"loss_attn": "gamma", "loss_hidden": "hidden_weight", "loss_relation": "relation_weight"}
    for term, weight in weights.items():
        assert (term in logged) == (EXPECTED[recipe][weight] > 0), term
    trainer.save_model()
    record = load_distillation_config(args.output_dir)
    assert record.recipe == recipe and record.temperature == EXPECTED[recipe]["temperature"]
    assert f"`{recipe}` recipe" in (tmp_path / "out" / "README.md").read_text()
