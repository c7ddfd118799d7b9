"""Fields shared by every fine-tuning task; each task module subclasses FinetuneConfig with its own."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from mlm.config import TrainingConfig, arg
from mlm.errors import ConfigError


@dataclass
class FinetuneConfig(TrainingConfig):
    """Fine-tune a pretrained encoder on a task; every field is also a --flag."""

    task: str = arg("cls", "Task: cls (sequence classification), ner (token classification) or qa (extractive QA).")
    model_name_or_path: str = arg(
        "outputs/pretrain-demo", "Backbone: a local HF BERT-family checkpoint directory (or a hub name when online)."
    )
    tokenizer_name: Optional[str] = arg(None, "Tokenizer directory or name (default: model_name_or_path).")
    data_dir: Optional[str] = arg(
        None, "Folder holding the task's files: relative train_file/validation_file/test_file are resolved in it."
    )
    train_file: Optional[str] = arg(None, "Training data file.")
    validation_file: Optional[str] = arg(None, "Validation data file (evaluated every eval_steps and at the end).")
    test_file: Optional[str] = arg(None, "Test data file (evaluated once at the end with the final model).")
    dataset_name: Optional[str] = arg(None, "A hub dataset name instead of files (needs network).")
    dataset_config_name: Optional[str] = arg(None, "Configuration of dataset_name.")
    max_seq_length: int = arg(128, "Longest input in tokens; longer inputs are truncated or windowed.")
    max_train_samples: Optional[int] = arg(None, "Train on at most this many examples (quick runs).")
    group_by_length: bool = arg(True, "Batch training examples of similar length together (less padding, faster).")
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.")

    def __post_init__(self):
        super().__post_init__()
        self.check_lengths()
        if self.data_dir is not None:
            if not os.path.isdir(self.data_dir):
                raise ConfigError(
                    f"data_dir: {self.data_dir} not found; point at your files with DATA=/path/to/folder (make) or "
                    "--data_dir DIR / --train_file FILE --validation_file FILE"
                )
            for name in ("train_file", "validation_file", "test_file"):
                value = getattr(self, name)
                if value and not os.path.isabs(value):
                    setattr(self, name, os.path.join(self.data_dir, value))
        if self.dataset_name is None and self.train_file is None:
            raise ConfigError(
                "no training data: set --train_file PATH (and --validation_file PATH), or --dataset_name NAME when online"
            )

    def check_lengths(self, max_positions: Optional[int] = None) -> None:
        """max_seq_length (and the task's window fields, in subclasses) usable together, and within a model's
        max_positions. Run by __post_init__, once the model is loaded, and by `mlm predict` after its overrides."""
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length: must be >= 8, got {self.max_seq_length}")
        if max_positions is not None and self.max_seq_length > max_positions:
            raise ConfigError(f"max_seq_length: {self.max_seq_length} exceeds the model's {max_positions} positions")
