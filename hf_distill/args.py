"""`DistillationArguments`: `TrainingArguments` plus the distillation settings."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from . import terms
from .engines import TEACHER_DTYPES
from .recipes import DEFAULTS, RECIPES, defaults, resolve_loss_settings

__all__ = ["ATTENTION_LOSSES", "DistillationArguments", "HIDDEN_LOSSES", "RELATION_LOSSES"]

ATTENTION_LOSSES = terms.get_term("loss_attn").kinds["attention_loss"]
HIDDEN_LOSSES = terms.get_term("loss_hidden").kinds["hidden_loss"]
RELATION_LOSSES = terms.get_term("loss_relation").kinds["relation_loss"]


def _shown_default(text: str) -> str:
    """The end of a help text whose field defaults to `None` standing for something else: "(default: <text>)".

    `HfArgumentParser` formats help with `ArgumentDefaultsHelpFormatter`, which would append "(default: None)".
    A help text that mentions `%(default)` gets no such suffix; `%(default).0s` expands to nothing.
    """
    return f" (default: {text})%(default).0s"


def _recipe_default(name: str) -> str:
    """The effective default of a loss setting: the library's, unless `recipe` sets it."""
    return _shown_default(f"{DEFAULTS[name]!r}, or the recipe's")


@dataclass
class DistillationArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`DistillationTrainer`]. The total loss is

        alpha * CE(student, labels) + beta * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + gamma * L_attn
              + hidden_weight * L_hidden + relation_weight * L_relation

    Parameters:
        recipe (`str`, *optional*):
            A recipe (`recommended`, the best setting of our quality study: MiniLM's attention and value-relation
            KL with soft targets at T=1; `logits`, its best from the logits alone; `seed`, the lab notebook's; the
            published `hinton`, `distilbert`, `tinybert`, `minilm`, `minilmv2`; see `hf_distill.recipes`) that
            fills every loss setting below left unset; explicit values win. The defaults below (the `seed`
            recipe's) apply where neither sets a value. The `hf-distill` command defaults to `recommended`.
        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature `T` of the soft-label term (Hinton et al., 2015). The KL term is multiplied by `T^2`.
        alpha (`float`, *optional*, defaults to `0.1`):
            Weight of the hard-label cross-entropy.
        beta (`float`, *optional*, defaults to `0.5`):
            Weight of the `T^2`-scaled soft-label KL divergence.
        gamma (`float`, *optional*, defaults to `0.4`):
            Weight of the self-attention distillation term. With `gamma=0` no attention maps are computed.
        attention_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"`: MSE between head-averaged attention maps (the lab notebook's loss; head counts may differ).
            `"kl"`: KL divergence between per-head attention distributions, as in MiniLM (same head count).
            `"score_mse"`: MSE between per-head pre-softmax scores, as in TinyBERT (same head count).
        layer_map (`list[int]`, *optional*):
            For each student layer, the teacher layer whose attention it learns (0-indexed). Defaults to a uniform
            map in which the last student layer matches the last teacher layer: 12 -> 6 gives [1, 3, 5, 7, 9, 11].
        hidden_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the hidden-state term. With `0` no hidden states are kept. For `"mse"` with unequal widths
            the student's states go through TinyBERT's learned projection (`hf_distill.projection`).
        hidden_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"`: TinyBERT/PKD-style MSE between the embedding outputs and between each student layer's output and
            its mapped teacher layer's output, averaged. `"cosine"`: DistilBERT's `1 - cos` on the last layer only.
        relation_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the self-relation term between the last student layer and its mapped teacher layer. With `0`
            no projections are recorded.
        relation_loss (`str`, *optional*, defaults to `"qkv"`):
            `"value"`: MiniLM's value-relation KL, per attention head (same head count). `"qkv"`: MiniLMv2's mean of
            the Q-Q, K-K and V-V relation KLs over `relation_heads` relation heads (any widths and head counts).
        relation_heads (`int`, *optional*):
            Relation heads for `"qkv"`; must divide both widths. Default: the teacher's attention head count.
        term_settings (`dict`, *optional*):
            The weights and kinds of loss terms added with `hf_distill.terms.register_term`, by setting name (e.g.
            `{"logit_mse_weight": 0.5}`); unset ones take the term's defaults. The built-in terms use the fields above.
        skip_nonfinite_steps (`bool`, *optional*, defaults to `False`):
            On a NaN/inf loss term, skip that optimizer step (no update) with a warning instead of stopping training.
        allow_resume_with_different_settings (`bool`, *optional*, defaults to `False`):
            Allow `resume_from_checkpoint` when the distillation settings or the teacher differ from the checkpoint's.
        teacher_model_name_or_path (`str`, *optional*):
            The teacher, a folder written by `save_pretrained` or a Hub id, loaded by [`DistillationTrainer`] with the
            Auto class of the student's task when no `teacher_model` is passed to it.
        teacher_revision (`str`, *optional*):
            The branch, tag or commit of `teacher_model_name_or_path` to load (Hub ids). Default: the Hub's default.
        teacher_trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow running custom modeling code from the teacher's folder or Hub repository when the teacher is given
            as a path or id. Only turn it on for repositories you trust. (Named apart from the example scripts'
            `trust_remote_code`, which governs their own model and data.)
        student_num_layers (`int`, *optional*):
            Build the student inside [`DistillationTrainer`] from the `model` it is given, with this many of its
            layers (`hf_distill.build_student`); that `model` is then the teacher unless a teacher is named. Lets an
            unchanged training script distil a shrunk copy of the model it loads.
        student_layers (`list[int]`, *optional*):
            The layers of `model` to copy into the student (0-indexed, increasing); implies `student_num_layers`.
            Default: an even spread that keeps the last layer (12 -> 6: `[1, 3, 5, 7, 9, 11]`).
        teacher_dtype (`str`, *optional*):
            Cast the teacher's weights to this dtype: `"bfloat16"`/`"float16"` halve its memory while the student
            trains in float32 or mixed precision; `"auto"` follows `bf16`/`fp16`. Default: keep the teacher as loaded.
        teacher_cache_dir (`str`, *optional*):
            Opt-in teacher-output cache (needs `gamma=0`): the teacher's logits on the training set are computed once,
            stored under this folder keyed on teacher weights, data, tokenizer and collator, and reused in every
            later epoch and run instead of running the teacher. See `hf_distill.teacher_cache`.
        teacher_cache_top_k (`int`, *optional*, defaults to `64`):
            Causal language models with `teacher_cache_dir`: the cache keeps, per position, the teacher's `k` most
            probable tokens and the mass of the rest, and the KD term becomes the KL over those `k` tokens plus one
            tail bucket (equal to the full KL when `k` is the vocabulary size; see docs/losses.md).
        fuse_lm_head (`bool`, *optional*):
            Causal and masked language models and seq2seq decoders: compute the student's (and teacher's)
            output projection inside the loss, a chunk of tokens at a time
            (`hf_distill.token_kd.fused_token_output_loss`), so the `(tokens, vocabulary)` logits never exist
            whole in training; same gradients. Default: on where the
            head is a plain `nn.Linear` without logit post-processing and the engine does not shard it; `True`
            requires it, `False` turns it off.

    The lab notebook's nested formula `BETA * (ALPHA * CE + (1 - ALPHA) * KD) + GAMMA * attn` is reproduced by
    `alpha = BETA * ALPHA`, `beta = BETA * (1 - ALPHA)`, `gamma = GAMMA` (0.05, 0.45, 0.4 for its 0.1/0.5/0.4).
    """

    # The loss settings default to None, which means "the recipe's value, else the library default" (recipes.py);
    # after __post_init__ they always hold the value in use (4.0 / 0.1 / 0.5 / 0.4 / "mse" / 0 ... without a recipe).
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A published recipe that fills the loss settings you leave unset: "
            + ", ".join(RECIPES)
            + ". Default: none in Python (the library defaults, which are the 'seed' recipe); 'recommended' in the "
            "hf-distill command.",
            "choices": list(RECIPES),
        },
    )
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Softmax temperature T of the soft-label term; the KL term is multiplied by T^2."
            + _recipe_default("temperature")
        },
    )
    alpha: float | None = field(
        default=None, metadata={"help": "Weight of the hard-label cross-entropy term." + _recipe_default("alpha")}
    )
    beta: float | None = field(
        default=None, metadata={"help": "Weight of the T^2-scaled soft-label KL term." + _recipe_default("beta")}
    )
    gamma: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the self-attention distillation term; 0 disables it (no attention maps)."
            + _recipe_default("gamma")
        },
    )
    attention_loss: str | None = field(
        default=None,
        metadata={
            "help": "Attention loss: 'mse' (head-averaged maps, head counts may differ), 'kl' (MiniLM, per head) or "
            "'score_mse' (TinyBERT, per-head pre-softmax scores)." + _recipe_default("attention_loss"),
            "choices": list(ATTENTION_LOSSES),
        },
    )
    layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher layer (0-indexed) for each student layer, e.g. 1 3 5 7 9 11."
            + _shown_default("uniform, the last student layer on the last teacher layer")
        },
    )
    hidden_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the hidden-state term; 0 disables it. With 'mse' and unequal widths a learned "
            "projection (TinyBERT's W_h) maps the student to the teacher's width." + _recipe_default("hidden_weight")
        },
    )
    hidden_loss: str | None = field(
        default=None,
        metadata={
            "help": "Hidden-state loss: 'mse' (embeddings and every mapped layer, TinyBERT/PKD) or 'cosine' (last "
            "layer, DistilBERT)." + _recipe_default("hidden_loss"),
            "choices": list(HIDDEN_LOSSES),
        },
    )
    relation_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the self-relation term (MiniLM/MiniLMv2) on the last student layer; 0 disables it."
            + _recipe_default("relation_weight")
        },
    )
    relation_loss: str | None = field(
        default=None,
        metadata={
            "help": "Relation loss: 'value' (MiniLM value relation, same head count) or 'qkv' (MiniLMv2 Q-Q, K-K, "
            "V-V relations over relation heads, any widths)." + _recipe_default("relation_loss"),
            "choices": list(RELATION_LOSSES),
        },
    )
    relation_heads: int | None = field(
        default=None,
        metadata={
            "help": "Relation heads for relation_loss='qkv' (must divide both widths)."
            + _shown_default("the teacher's attention heads")
        },
    )
    term_settings: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Settings of loss terms added with hf_distill.terms.register_term, as JSON, e.g. "
            "'{\"logit_mse_weight\": 0.5}' (the built-in terms have their own flags)."
        },
    )
    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={"help": "On a NaN/inf loss term, skip that optimizer step (no update) instead of stopping."},
    )
    allow_resume_with_different_settings: bool = field(
        default=False,
        metadata={"help": "Allow resuming a checkpoint whose distillation settings or teacher differ from these."},
    )
    # Teacher and student from the arguments. Every name here is apart from the fields of the official example
    # scripts' argument dataclasses (tests/test_official_scripts.py), so those scripts parse them side by side.
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The teacher (a save_pretrained folder or Hub id), loaded by DistillationTrainer with the Auto "
            "class of the student's task when no teacher_model is passed."
            + _shown_default("the trainer's teacher_model, or with student_num_layers the model it is given")
        },
    )
    teacher_revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch, tag or commit of teacher_model_name_or_path to load."
            + _shown_default("the Hub's default")
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modeling code from the teacher's folder/repo (only for code you trust)."},
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Build the student from this many layers of the model the trainer is given (build_student); that "
            "model becomes the teacher unless teacher_model_name_or_path names one."
            + _shown_default("unset: the model as given is the student")
        },
    )
    student_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "The layers to copy into the student, increasing, e.g. 0 2 4 7 9 11; implies student_num_layers."
            + _shown_default("an even spread that keeps the last layer")
        },
    )

    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Run the teacher in this dtype ('bfloat16' or 'float16' halve its memory; 'auto' follows "
            "bf16/fp16)." + _shown_default("the dtype the teacher was loaded in"),
            "choices": list(TEACHER_DTYPES),
        },
    )

    teacher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for the teacher-logit cache (needs gamma=0): the teacher's training-set logits are "
            "computed once, stored there (keyed on teacher, data, tokenizer, collator) and reused by later epochs "
            "and runs."
        },
    )

    teacher_cache_top_k: int = field(
        default=64,
        metadata={
            "help": "Causal LMs with teacher_cache_dir: tokens kept per position in the cache (their probabilities "
            "plus the mass of the rest); the KD term is then the KL over those k tokens and one tail bucket."
        },
    )
    fuse_lm_head: bool | None = field(
        default=None,
        metadata={
            "help": "Language models: fuse the student's output projection (lm_head) with the loss, a chunk of tokens "
            "at a time, so the (tokens, vocabulary) logits never exist whole in training. Default: on for causal "
            "and masked LMs whose head allows it (see docs/losses.md); False turns it off."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_distillation()

    def _validate_distillation(self) -> None:
        extra = self._registered_term_settings()
        given = {name: getattr(self, name) if name in _FIELDS else extra.get(name) for name in defaults()}
        for name, value in resolve_loss_settings(self.recipe, given).items():
            if name in _FIELDS:
                setattr(self, name, value)
            else:
                extra[name] = value
        self.term_settings = extra or None
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature!r}. Try 4.0.")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}. Try 4.0 (Hinton recommends 1-10).")
        weights = [term.weight for term in terms.registered_terms()]
        for name in weights:
            value = self.setting(name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if not any(self.term_weights().values()):
            names = ", ".join(f"`{name}`" for name in weights[:-1]) + f" and `{weights[-1]}`"
            raise ValueError(
                f"{names} are all 0: there is nothing to train on. Set at least one loss weight > 0, e.g. alpha=0.1 "
                "beta=0.5 gamma=0.4."
            )
        for term in terms.registered_terms():
            for kind, allowed in term.kinds.items():
                if self.setting(kind) not in allowed:
                    raise ValueError(f"`{kind}` must be one of {', '.join(allowed)}, got {self.setting(kind)!r}.")
        if self.relation_heads is not None and (
            isinstance(self.relation_heads, bool)
            or not isinstance(self.relation_heads, int)
            or self.relation_heads < 1
        ):
            raise ValueError(f"`relation_heads` must be a positive integer (or unset), got {self.relation_heads!r}.")
        if self.layer_map is not None:
            if isinstance(self.layer_map, (str, bytes)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layer_map
            ):
                raise ValueError(f"`layer_map` must be a list of integers, got {self.layer_map!r}.")
            if len(self.layer_map) == 0 or any(i < 0 for i in self.layer_map):
                raise ValueError(
                    f"`layer_map` must list one teacher layer index >= 0 per student layer, got {self.layer_map!r}."
                )
            self.layer_map = list(self.layer_map)
        self._validate_student_layers()
        if (
            isinstance(self.teacher_cache_top_k, bool)
            or not isinstance(self.teacher_cache_top_k, int)
            or (self.teacher_cache_top_k < 1)
        ):
            raise ValueError(
                f"`teacher_cache_top_k` must be a positive integer, got {self.teacher_cache_top_k!r}. Try 64."
            )
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(
                f"`teacher_dtype` must be one of {', '.join(TEACHER_DTYPES)} (or unset), got {self.teacher_dtype!r}."
            )
        needing = []  # (weight, value, what of the teacher it needs) per active term that needs more than logits
        for term in terms.active_terms(self.setting) if self.teacher_cache_dir is not None else ():
            needs = term.needs_for(self.setting)
            internals = " and ".join(dict.fromkeys(v for k, v in terms.TEACHER_INTERNALS.items() if k in needs))
            if internals:
                needing.append((term.weight, self.setting(term.weight), internals))
        if needing:
            found = "; ".join(f"{name}={value} needs the teacher's {what}" for name, value, what in needing)
            off = " and ".join(f"{name}=0" for name, _, _ in needing)
            source = f" with recipe={self.recipe!r}" if self.recipe else ""
            raise ValueError(
                f"`teacher_cache_dir` caches the teacher's logits only, but {found}{source}: the teacher would "
                f"run at every step anyway and the cache would save nothing. Set {off} to use the cache "
                "(recipe='logits' distils the logits alone), or leave teacher_cache_dir unset."
            )

    def _registered_term_settings(self) -> dict[str, Any]:
        """`term_settings` as a dict (the command line gives JSON), every key a setting of a registered term."""
        extra = self.term_settings
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError as error:
                raise ValueError(f"`term_settings` must be a JSON object, got {extra!r} ({error}).") from error
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"`term_settings` must be a dict of setting name to value, got {extra!r}.")
        extra = dict(extra or {})
        for term in terms.registered_terms():
            taken = sorted(_FIELDS.intersection(term.settings)) if term.name not in terms.BUILT_IN_TERMS else []
            if taken:
                raise ValueError(f"loss term {term.name!r} names its settings {taken} like fields of "
                                 "DistillationArguments; give them names of their own.")  # fmt: skip
        known = [name for name in terms.setting_names() if name not in _FIELDS]
        for name in sorted(set(extra) - set(known)):
            where = f"set it as {name}=..., not in term_settings" if name in _FIELDS else "register its term first"
            raise ValueError(
                f"`term_settings` has {name!r}, which is no setting of a term added with "
                f"hf_distill.terms.register_term ({', '.join(known) or 'none is registered'}): {where}."
            )
        return extra

    def setting(self, name: str) -> Any:
        """A loss setting by name: a field for the built-in terms (`gamma`), else from `term_settings`."""
        if name in _FIELDS:
            return getattr(self, name)
        return (self.term_settings or {}).get(name)

    def _validate_student_layers(self) -> None:
        """`student_num_layers` / `student_layers`: a positive count, a list of indices, and the two in agreement."""
        count, layers = self.student_num_layers, self.student_layers
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"`student_num_layers` must be a positive integer (or unset), got {count!r}.")
        if layers is None:
            return
        if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"`student_layers` must be a list of layer indices, got {layers!r}.")
        if not layers or any(i < 0 for i in layers):
            raise ValueError(f"`student_layers` must list one layer index >= 0 per student layer, got {layers!r}.")
        if count is not None and count != len(layers):
            raise ValueError(
                f"student_num_layers={count} but student_layers {list(layers)} names {len(layers)} layers. Give one "
                "of the two (student_layers alone implies its length)."
            )
        self.student_layers, self.student_num_layers = list(layers), len(layers)

    @property
    def trust_remote_code(self) -> bool:
        """Deprecated name of `teacher_trust_remote_code` (renamed: the example scripts' own field has this name)."""
        return self.teacher_trust_remote_code

    @trust_remote_code.setter
    def trust_remote_code(self, value: bool) -> None:
        self.teacher_trust_remote_code = value

    # `Trainer` pickles the arguments into `training_args.bin` beside every save (and pushes it to the Hub); a plain
    # pickle would carry `hub_token` in clear text. Pickles get `None` for every `*_token` field (the rule of
    # `TrainingArguments.to_dict`); in-memory copies keep the token so pushes still authenticate.
    def __getstate__(self) -> dict:
        return {k: None if k.endswith("_token") else v for k, v in self.__dict__.items()}

    def __copy__(self) -> DistillationArguments:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> DistillationArguments:
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def distillation_settings(self) -> dict:
        """The distillation fields (not the generic training ones), as saved in `distillation_config.json`.

        Settings of registered terms (`term_settings`) come under `term_settings`, only when there are some."""
        settings = {"recipe": self.recipe}
        settings.update({name: getattr(self, name) for name in terms.setting_names() if name in _FIELDS})
        settings["layer_map"] = self.layer_map
        if self.term_settings:
            settings["term_settings"] = dict(self.term_settings)
        return settings

    def term_weights(self) -> dict[str, float]:
        """The weight of each logged loss term (`loss_ce`, `loss_kd`, `loss_attn`, ...) in the total."""
        return {term.name: self.setting(term.weight) for term in terms.registered_terms()}


_FIELDS = frozenset(f.name for f in dataclasses.fields(DistillationArguments))
_dataclass_init = DistillationArguments.__init__


@functools.wraps(_dataclass_init)
def _init_with_deprecated_names(self, *args, trust_remote_code: bool | None = None, **kwargs) -> None:
    # `trust_remote_code=` keeps working in Python; it is no field, so no command-line flag clashes with the scripts'.
    if trust_remote_code is not None:
        if "teacher_trust_remote_code" in kwargs:
            raise ValueError(
                "`trust_remote_code` is the old name of `teacher_trust_remote_code`; pass only "
                "teacher_trust_remote_code."
            )
        warnings.warn(
            "DistillationArguments(trust_remote_code=...) is renamed teacher_trust_remote_code (the example scripts' "
            "own trust_remote_code flag governs their model and data); the old name will be removed.",
            FutureWarning,
            stacklevel=2,
        )
        kwargs["teacher_trust_remote_code"] = trust_remote_code
    _dataclass_init(self, *args, **kwargs)


DistillationArguments.__init__ = _init_with_deprecated_names
