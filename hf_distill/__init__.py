"""hf-distill: knowledge distillation as a drop-in replacement for the Hugging Face `Trainer`."""

from ._version import __version__  # noqa: F401 (hf_distill.__version__)
from .args import DistillationArguments
from .artifacts import DistillationRecord, load_distillation_config, load_training_history
from .augment import augment_dataset, augment_texts, embedding_neighbours
from .card import build_model_card, teacher_lineage
from .checks import parse_config_file
from .errors import DistillationSettingError
from .guards import NonFiniteLossError
from .losses import (
    attention_kl_loss,
    attention_mse_loss,
    attention_score_mse_loss,
    hard_label_loss,
    hidden_cosine_loss,
    hidden_mse_loss,
    position_soft_label_loss,
    relation_kl_loss,
    soft_label_loss,
    token_hard_label_loss,
    token_soft_label_loss,
)
from .modeling import default_layer_map
from .seq2seq_trainer import DistillationSeq2SeqArguments, DistillationSeq2SeqTrainer
from .student import build_student
from .tasks import TASKS, detect_task
from .trainer import DistillationTrainer

__all__ = [
    "DistillationArguments",
    "DistillationRecord",
    "DistillationSeq2SeqArguments",
    "DistillationSeq2SeqTrainer",
    "DistillationSettingError",
    "DistillationTrainer",
    "NonFiniteLossError",
    "TASKS",
    "attention_kl_loss",
    "augment_dataset",
    "augment_texts",
    "attention_mse_loss",
    "attention_score_mse_loss",
    "build_model_card",
    "build_student",
    "default_layer_map",
    "detect_task",
    "embedding_neighbours",
    "hard_label_loss",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "load_distillation_config",
    "load_training_history",
    "parse_config_file",
    "position_soft_label_loss",
    "relation_kl_loss",
    "soft_label_loss",
    "teacher_lineage",
    "token_hard_label_loss",
    "token_soft_label_loss",
]
