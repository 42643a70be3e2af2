"""The loss terms, declared once: what each is called, weighted by, needs from the models, and how it is computed.

Everything that lists terms reads this registry: the argument checks and recipe defaults, the trainer's loss and
its per-term logs, the resume check, the saved record and its formula, the model card and the plots. A new term is
one [`LossTerm`] passed to [`register_term`] plus its loss function (see docs/architecture.md, "Adding a loss term").

The output terms (`loss_ce`, `loss_kd`) are computed together by `tasks.output_terms`, which shares one
log-softmax between them, and are normalised over the task's units (examples, or tokens for per-token tasks). Every
other term is computed by its `compute` function from a [`TermContext`] and normalised over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import losses

__all__ = [
    "NEEDS",
    "LossTerm",
    "ModelView",
    "TermContext",
    "active_terms",
    "get_term",
    "loss_formula",
    "needs_of",
    "register_term",
    "registered_terms",
    "setting_names",
    "unregister_term",
]

# What a term can need from the models; the trainer records exactly the union of the active terms' needs.
NEEDS = {
    "logits": "the student's logits",
    "teacher_logits": "the teacher's logits (from the teacher-output cache when there is one)",
    "attention_maps": "attention maps of the mapped layers",
    "attention_scores": "pre-softmax attention scores instead of maps",
    "hidden_states": "hidden states",
    "relations": "the queries, keys and values of the last student layer and its mapped teacher layer",
    "layer_map": "a layer map between student and teacher layers",
    "projection": "a learned projection when student and teacher widths differ",
}
# Needs the teacher-output cache cannot serve (the teacher must run every step), as the error message names them.
TEACHER_INTERNALS = {
    "attention_maps": "attention maps",
    "attention_scores": "attention maps",
    "hidden_states": "hidden states",
    "relations": "projections",
}


@dataclass
class ModelView:
    """What one model (student or teacher) gave for a batch; a field is `None` when no active term needs it."""

    outputs: Any = None  # the model's own output (a `ModelOutput`); None for a cached teacher
    logits: Any = None  # `tasks.task_logits`: a tuple of tensors, or the fused head's `ProjectedLogits`
    attention_maps: list[torch.Tensor] | None = None  # (B, H, T, T) per mapped layer (scores for "score_mse")
    hidden_states: tuple[torch.Tensor, ...] | None = None  # the embedding output, then each layer's output
    projections: dict[str, torch.Tensor] | None = None  # "query", "key", "value" of the relation layer, (B, T, D)
    causal: bool | None = None  # whether the relation layer's attention is causal


@dataclass
class TermContext:
    """Everything a term's `compute` may read for one batch.

    Args:
        settings (`Callable[[str], Any]`): a setting's value by name (`DistillationArguments.setting`).
        student, teacher (`ModelView`): what each model gave.
        mask (`torch.Tensor`, *optional*): `(B, T)`, the positions the layers see (frames for speech encoders).
        layer_map (`list[int]`, *optional*): the teacher layer of each student layer.
        hidden_projection (`Callable`, *optional*): TinyBERT's learned `W_h` (`(states, layer) -> states`).
        relation_heads (`int`, *optional*): the relation heads of the self-relation term.
    """

    settings: Callable[[str], Any]
    student: ModelView
    teacher: ModelView
    mask: torch.Tensor | None = None
    layer_map: list[int] | None = None
    hidden_projection: Callable | None = None
    relation_heads: int | None = None


@dataclass(frozen=True)
class LossTerm:
    """The declaration of one loss term.

    Args:
        name (`str`): the logged key (`loss_attn`); `eval_<name>` in evaluation.
        weight (`str`): the setting that weights it in the total (`gamma`); 0 turns the term off.
        symbol (`str`): how formulas name the term (`L_attn`); `formula` defaults to it.
        label (`str`): how the plots name it.
        defaults (`dict`): the library default of each of its settings: the weight, its kind settings and any other
            setting it reads (`temperature`); a recipe may override them.
        kinds (`dict`, *optional*): kind setting -> allowed values, e.g. `{"attention_loss": ("mse", "kl")}`.
        needs (`frozenset[str]`, *optional*): what it needs from the models (keys of `NEEDS`).
        kind_needs (`dict`, *optional*): more needs for a kind value, e.g. `{"score_mse": {"attention_scores"}}`.
        recorded (`tuple[str]`, *optional*): record fields the trainer fills about the term (`hidden_projection`),
            saved and checked on resume with its settings.
        per_unit (`bool`, *optional*): an output term, computed by `tasks.output_terms` and normalised over the
            task's units; otherwise `compute` gives one value per example, normalised over examples.
        compute (`Callable[[TermContext], torch.Tensor]`, *optional*): the per-example values, `(B,)`.
        formula (`str`, *optional*): the term in the saved loss formula (`T^2 * KL(...)`); default: `symbol`.
        card (`str`, *optional*): the term with its values on the card, a `str.format` template over its settings;
            default `"{<weight>} * <symbol>[{<kind>}]"`.
        on_card_at_zero (`bool`, *optional*): show it on the card even with weight 0.
        describe (`Callable[[Mapping], str]`, *optional*): the card's sentence about it, from the record's values.
    """

    name: str
    weight: str
    symbol: str
    label: str
    defaults: Mapping[str, Any]
    kinds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    kind_needs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    recorded: tuple[str, ...] = ()
    per_unit: bool = False
    compute: Callable[[TermContext], torch.Tensor] | None = None
    formula: str | None = None
    card: str | None = None
    on_card_at_zero: bool = False
    describe: Callable[[Mapping[str, Any]], str] | None = None

    @property
    def settings(self) -> tuple[str, ...]:
        """Its settings (weight first, then kinds, then the others), as saved and checked on resume."""
        return tuple(dict.fromkeys([self.weight, *self.kinds, *self.defaults]))

    def needs_for(self, settings: Callable[[str], Any]) -> frozenset[str]:
        """What it needs from the models with the given kind settings."""
        extra = [self.kind_needs.get(settings(kind), frozenset()) for kind in self.kinds]
        return self.needs.union(*extra)

    def card_formula(self) -> str:
        if self.card is not None:
            return self.card
        kinds = "".join(f"[{{{kind}}}]" for kind in self.kinds)
        return f"{{{self.weight}}} * {self.symbol}{kinds}"

    def card_sentence(self, values: Mapping[str, Any]) -> str:
        return self.describe(values) if self.describe is not None else f"{self.symbol} is the {self.label} term."


# ---- the built-in layer terms ------------------------------------------------------------------------------------

_ATTENTION_LOSS_FUNCTIONS = {
    "mse": losses.attention_mse_loss,
    "kl": losses.attention_kl_loss,
    "score_mse": losses.attention_score_mse_loss,
}


def attention_term(ctx: TermContext) -> torch.Tensor:
    """Per-example attention loss of each student layer against its mapped teacher layer, averaged over layers."""
    loss = _ATTENTION_LOSS_FUNCTIONS[ctx.settings("attention_loss")]
    pairs = zip(ctx.student.attention_maps, ctx.teacher.attention_maps)
    return torch.stack([loss(s, t, ctx.mask, reduction="none") for s, t in pairs]).mean(dim=0)  # (B,)


def hidden_state_term(ctx: TermContext) -> torch.Tensor:
    """Per-example hidden-state loss: `mse` over embeddings and mapped layers (averaged), or `cosine` on the last.

    `hidden_states[0]` is the embedding output and `hidden_states[i + 1]` the output of layer `i`. With unequal
    widths the student's states go through `ctx.hidden_projection` first (TinyBERT's `W_e`, `W_h`).
    """
    student, teacher = ctx.student.hidden_states, ctx.teacher.hidden_states
    if ctx.settings("hidden_loss") == "cosine":
        return losses.hidden_cosine_loss(student[-1], teacher[-1], ctx.mask, reduction="none")
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(ctx.layer_map)]
    project = ctx.hidden_projection if ctx.hidden_projection is not None else (lambda states, layer: states)
    per_layer = [
        losses.hidden_mse_loss(project(student[s], s), teacher[t], ctx.mask, reduction="none") for s, t in pairs
    ]
    return torch.stack(per_layer).mean(dim=0)  # (B,)


def relation_term(ctx: TermContext) -> torch.Tensor:
    """Per-example self-relation KL of the last student layer against its mapped teacher layer.

    `value`: MiniLM's value relation. `qkv`: MiniLMv2's mean of the Q-Q, K-K and V-V relations.
    """
    student, teacher, causal = ctx.student.projections, ctx.teacher.projections, ctx.teacher.causal
    if ctx.student.causal != causal:
        kinds = {True: "causal (a decoder)", False: "bidirectional"}
        raise ValueError(
            f"relation_weight={ctx.settings('relation_weight')}: the student's attention is "
            f"{kinds[ctx.student.causal]} but the teacher's is {kinds[causal]}, so their token relations cover "
            "different tokens. Distil a decoder into a decoder, or set relation_weight=0."
        )
    names = ("value",) if ctx.settings("relation_loss") == "value" else ("query", "key", "value")
    per_kind = [
        losses.relation_kl_loss(student[n], teacher[n], ctx.relation_heads, ctx.mask, "none", causal) for n in names
    ]
    return torch.stack(per_kind).mean(dim=0)  # (B,)


# ---- the card's sentences ----------------------------------------------------------------------------------------


def _describe_attention(r: Mapping[str, Any]) -> str:
    what = {
        "kl": "per-head KL between attention distributions (MiniLM)",
        "score_mse": "per-head MSE between pre-softmax attention scores (TinyBERT)",
    }.get(r.get("attention_loss"), "MSE between head-averaged attention maps")
    return (
        f"L_attn is the {what} of each student layer and its mapped teacher layer (layer map above), averaged over "
        "layers."
    )


def _describe_hidden(r: Mapping[str, Any]) -> str:
    if r.get("hidden_loss") != "mse":
        return "L_hidden is 1 - cosine similarity of the last layer's hidden states (DistilBERT)."
    projection = (
        f" The student's states go through a learned projection ({r['hidden_projection']}), trained with the "
        "student and not part of this model."
        if r.get("hidden_projection")
        else ""
    )
    return (
        "L_hidden is the MSE between the embedding outputs and between each student layer's output and its mapped "
        "teacher layer's output, averaged (TinyBERT/PKD)." + projection
    )


def _describe_relation(r: Mapping[str, Any]) -> str:
    which = "(values, MiniLM)." if r.get("relation_loss") == "value" else "(queries, keys and values, MiniLMv2)."
    return "L_relation is the KL between the teacher's and the student's self-relations of the last layer " + which


# ---- the registry ------------------------------------------------------------------------------------------------

_BUILT_IN = (
    LossTerm(
        name="loss_ce", weight="alpha", symbol="CE", label="CE (hard labels)", defaults={"alpha": 0.1},
        needs=frozenset({"logits"}), per_unit=True, formula="CE(s, y)", on_card_at_zero=True,
        describe=lambda r: "CE is the hard-label cross-entropy.",
    ),
    LossTerm(
        name="loss_kd", weight="beta", symbol="KL", label="KD (T^2 KL)", defaults={"beta": 0.5, "temperature": 4.0},
        needs=frozenset({"logits", "teacher_logits"}), per_unit=True,
        formula="T^2 * KL(softmax(t/T) || softmax(s/T))",
        card="{beta} * {temperature}^2 * KL(softmax(t/{temperature}) || softmax(s/{temperature}))",
        on_card_at_zero=True, describe=lambda r: f"KL is the soft-label term ({r.get('kd_loss_convention')}).",
    ),
    LossTerm(
        name="loss_attn", weight="gamma", symbol="L_attn", label="attention",
        defaults={"gamma": 0.4, "attention_loss": "mse"}, kinds={"attention_loss": ("mse", "kl", "score_mse")},
        needs=frozenset({"attention_maps", "layer_map"}), kind_needs={"score_mse": frozenset({"attention_scores"})},
        compute=attention_term, on_card_at_zero=True, describe=_describe_attention,
    ),
    LossTerm(
        name="loss_hidden", weight="hidden_weight", symbol="L_hidden", label="hidden states",
        defaults={"hidden_weight": 0.0, "hidden_loss": "mse"}, kinds={"hidden_loss": ("mse", "cosine")},
        needs=frozenset({"hidden_states"}), kind_needs={"mse": frozenset({"layer_map", "projection"})},
        recorded=("hidden_projection",), compute=hidden_state_term, describe=_describe_hidden,
    ),
    LossTerm(
        name="loss_relation", weight="relation_weight", symbol="L_relation", label="self-relations",
        defaults={"relation_weight": 0.0, "relation_loss": "qkv", "relation_heads": None},
        kinds={"relation_loss": ("value", "qkv")}, needs=frozenset({"relations", "layer_map"}),
        compute=relation_term, describe=_describe_relation,
    ),
)  # fmt: skip
BUILT_IN_TERMS = tuple(term.name for term in _BUILT_IN)
_REGISTRY: dict[str, LossTerm] = {term.name: term for term in _BUILT_IN}


def registered_terms() -> tuple[LossTerm, ...]:
    """Every term, built-in ones first, in the order they are logged, saved and shown."""
    return tuple(_REGISTRY.values())


def get_term(name: str) -> LossTerm:
    return _REGISTRY[name]


def setting_names() -> list[str]:
    """Every term's settings, in term order (`alpha`, `beta`, `temperature`, `gamma`, `attention_loss`, ...)."""
    return list(dict.fromkeys(name for term in registered_terms() for name in term.settings))


def register_term(term: LossTerm) -> LossTerm:
    """Add a loss term; its weight and kind settings are then passed in `DistillationArguments(term_settings=...)`.

    Raises:
        `ValueError` for a name or setting already taken, an unknown need, or a term without a `compute` function.
    """
    if term.name in _REGISTRY or not term.name.startswith("loss_"):
        raise ValueError(f"a loss term needs a new name starting with 'loss_', got {term.name!r}.")
    taken = set(setting_names()) | {r for t in registered_terms() for r in t.recorded}
    clashes = sorted(taken.intersection(term.settings))
    if clashes:
        raise ValueError(f"term {term.name!r}: settings {clashes} already belong to another term; rename them.")
    if term.weight not in term.defaults or any(kind not in term.defaults for kind in term.kinds):
        raise ValueError(f"term {term.name!r}: `defaults` must give a default for its weight and each kind setting.")
    unknown = sorted(term.needs.union(*term.kind_needs.values()) - set(NEEDS))
    if unknown:
        raise ValueError(f"term {term.name!r}: unknown needs {unknown}; choose from {', '.join(NEEDS)}.")
    if term.per_unit or term.compute is None:
        raise ValueError(
            f"term {term.name!r}: a new term is computed per example by its `compute` function; the per-unit output "
            "terms (loss_ce, loss_kd) are computed by tasks.output_terms."
        )
    _REGISTRY[term.name] = term
    return term


def unregister_term(name: str) -> None:
    """Remove a term added with `register_term` (built-in terms stay)."""
    if name in BUILT_IN_TERMS:
        raise ValueError(f"{name!r} is a built-in term and cannot be removed; set its weight to 0 instead.")
    _REGISTRY.pop(name, None)


def active_terms(settings: Callable[[str], Any]) -> tuple[LossTerm, ...]:
    """The terms whose weight is > 0."""
    return tuple(term for term in registered_terms() if settings(term.weight) > 0)


def needs_of(settings: Callable[[str], Any]) -> frozenset[str]:
    """What the active terms need from the models, together."""
    return frozenset().union(*(term.needs_for(settings) for term in active_terms(settings)))


def loss_formula() -> str:
    """The total loss, as saved in `distillation_config.json`: `alpha * CE(s, y) + beta * T^2 * KL(...) + ...`."""
    return " + ".join(f"{term.weight} * {term.formula or term.symbol}" for term in registered_terms())
