"""Where a training run stands (`TrainState`), and `checkpoint.pt`: that state with the model,
optimiser and loss-scaler state, written after every epoch so that `--resume` continues the run.

The file is one flat dict: `model`, `optimizer`, `scaler` and one key per `TrainState` field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune.atomic import atomic_path

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    """What resuming needs besides the weights and the optimiser state."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    best: dict[str, Any] | None = None  # the best evaluation record so far: metrics, epoch, step
    patience_left: int | None = None  # evaluations without improvement before stopping early

    def add_evaluation(self, record: dict[str, Any], monitor: str, patience: int | None) -> bool:
        """Keep `record` as the best when its `monitor` metric beats the best so far (True,
        and patience is full again); otherwise one evaluation of patience is spent."""
        if self.best is None or record[monitor] > self.best[monitor]:
            self.best, self.patience_left = record, patience
            return True
        if self.patience_left is not None:
            self.patience_left -= 1
        return False

    @property
    def out_of_patience(self) -> bool:
        return self.patience_left is not None and self.patience_left <= 0


def save_checkpoint(
    path: Path,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **dataclasses.asdict(state),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load the weights, optimiser and scaler state into the given objects; return the state."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is this a `finetune fit` run?)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    return TrainState(**{f.name: checkpoint[f.name] for f in dataclasses.fields(TrainState)})
