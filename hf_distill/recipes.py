"""Published distillation recipes as `DistillationArguments` settings (`recipe="tinybert"` etc.).

A recipe fills the loss settings the user left unset; anything given explicitly wins. Weights follow this
library's convention (the soft term is multiplied by T^2, see docs/losses.md). All recipes are the
*task-specific* stage: the student learns from a fine-tuned teacher on the task's data. Where a paper distils
in two stages (TinyBERT: intermediate layers, then predictions) or task-agnostically (MiniLM, MiniLMv2), its
terms are summed here in one stage, with the soft-label term added at T=1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .terms import registered_terms

__all__ = ["DEFAULTS", "RECIPES", "Recipe", "defaults", "resolve_loss_settings"]


def defaults() -> dict[str, Any]:
    """The library's default of every loss setting, as each term declares it (`hf_distill.terms`)."""
    return {name: value for term in registered_terms() for name, value in term.defaults.items()}


# The built-in terms' defaults (the lab notebook's printed formula), for whatever neither the user nor a recipe sets.
DEFAULTS: dict[str, Any] = defaults()


class Recipe(NamedTuple):
    paper: str
    settings: dict[str, Any]


# MiniLM's terms for a task: attention KL and value-relation KL (last layer), plus soft CE at T=1, no hard labels.
_MINILM: dict[str, Any] = dict(
    temperature=1.0, alpha=0.0, beta=1.0, gamma=1.0, attention_loss="kl", relation_weight=1.0, relation_loss="value"
)

RECIPES: dict[str, Recipe] = {
    # What benchmarks/quality.py measured best on SST-2 (docs/benchmarks.md): MiniLM's terms (per-head attention KL,
    # value-relation KL) with soft targets at T=1 and no hard-label term, about three times the logits' gain. It
    # needs the teacher's attention at every step, so the teacher runs live (no teacher-output cache).
    "recommended": Recipe(
        "this library's quality study, docs/benchmarks.md#quality-on-sst-2-distilled-against-fine-tuned-alone",
        dict(_MINILM),
    ),
    # The same study's best setting from the logits alone (soft targets at T=2, no hard labels): for models whose
    # attention cannot be recorded or compared, and with the teacher-output cache (a step then costs a student step).
    "logits": Recipe(
        "this library's quality study, docs/benchmarks.md#quality-on-sst-2-distilled-against-fine-tuned-alone",
        dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0),
    ),
    # CE + Hinton KD at T=4 + head-averaged attention MSE, weights 0.1 / 0.5 / 0.4.
    "seed": Recipe(
        "the project's lab notebook",
        dict(temperature=4.0, alpha=0.1, beta=0.5, gamma=0.4, attention_loss="mse"),
    ),
    # Soft targets at a high temperature, T^2-scaled, with a small weight on the hard labels.
    "hinton": Recipe(
        "Hinton, Vinyals and Dean, 2015, https://arxiv.org/abs/1503.02531",
        dict(temperature=4.0, alpha=0.1, beta=0.9, gamma=0.0),
    ),
    # L = 5.0 * soft CE (T=2, T^2-scaled) + 2.0 * hard-label loss + 1.0 * cosine of the last hidden states.
    "distilbert": Recipe(
        "Sanh et al., 2019, https://arxiv.org/abs/1910.01108",
        dict(temperature=2.0, alpha=2.0, beta=5.0, gamma=0.0, hidden_weight=1.0, hidden_loss="cosine"),
    ),
    # Attention-score MSE and hidden-state MSE (embeddings and mapped layers), plus prediction-layer soft CE at T=1.
    "tinybert": Recipe(
        "Jiao et al., 2020, https://arxiv.org/abs/1909.10351",
        dict(
            temperature=1.0,
            alpha=0.0,
            beta=1.0,
            gamma=1.0,
            attention_loss="score_mse",
            hidden_weight=1.0,
            hidden_loss="mse",
        ),
    ),  # fmt: skip
    # Attention KL and value-relation KL (last layer), plus soft CE at T=1.
    "minilm": Recipe(
        "Wang et al., 2020, https://arxiv.org/abs/2002.10957",
        dict(_MINILM),
    ),
    # Q-Q, K-K and V-V self-relation KL over relation heads (last layer), plus soft CE at T=1.
    "minilmv2": Recipe(
        "Wang et al., 2021, https://arxiv.org/abs/2012.15828",
        dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0, relation_weight=1.0, relation_loss="qkv"),
    ),
}


def resolve_loss_settings(recipe: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The loss settings to use: those `given` (not `None`), else the recipe's, else the library's defaults.

    Raises:
        `ValueError` for an unknown recipe name.
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"`recipe` must be one of {', '.join(RECIPES)} (or unset), got {recipe!r}.")
    chosen = defaults() | (RECIPES[recipe].settings if recipe else {})
    return {name: given[name] if given.get(name) is not None else chosen[name] for name in chosen}
