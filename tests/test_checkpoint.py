"""TrainState: keeping the best evaluation, early-stopping patience, and the checkpoint file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.checkpoint import TrainState, load_checkpoint, save_checkpoint

BEST = {"type": "eval", "epoch": 2, "step": 12, "image_retrieval_recall@5": 0.8}


def _trained_parts(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0**seed)


def test_train_state_round_trips_through_a_checkpoint(tmp_path):
    model, optimizer, scaler = _trained_parts(seed=0)
    state = TrainState(epoch=2, step=12, best=BEST, patience_left=1)
    save_checkpoint(tmp_path / "checkpoint.pt", state, model, optimizer, scaler)

    fresh_model, fresh_optimizer, fresh_scaler = _trained_parts(seed=1)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", fresh_model, fresh_optimizer, fresh_scaler)
    assert loaded == state
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fresh_model.state_dict()[name], value)
    saved, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    for key, value in saved["state"][0].items():
        torch.testing.assert_close(restored["state"][0][key], value)
    assert fresh_scaler.state_dict() == scaler.state_dict()


def test_a_checkpoint_as_earlier_versions_wrote_it_still_resumes(tmp_path):
    """Before TrainState, `fit` wrote this flat dict; the layout is unchanged."""
    model, optimizer, scaler = _trained_parts(seed=0)
    legacy = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": 3,
        "step": 18,
        "best": BEST,
        "patience_left": None,
    }
    torch.save(legacy, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", *_trained_parts(seed=1))
    assert loaded == TrainState(epoch=3, step=18, best=BEST, patience_left=None)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume.*checkpoint.pt"):
        load_checkpoint(tmp_path / "checkpoint.pt", *_trained_parts(seed=0))


def test_the_best_evaluation_is_kept_and_patience_is_spent_without_improvement():
    state = TrainState(patience_left=2)
    first, worse, better = ({"r@5": value} for value in (0.5, 0.4, 0.6))
    assert state.add_evaluation(first, "r@5", patience=2)
    assert not state.add_evaluation(worse, "r@5", patience=2)
    assert (state.best, state.patience_left, state.out_of_patience) == (first, 1, False)
    assert state.add_evaluation(better, "r@5", patience=2)
    assert (state.best, state.patience_left) == (better, 2)  # patience is full again
    for _ in range(2):
        state.add_evaluation(worse, "r@5", patience=2)
    assert state.out_of_patience and state.best == better


def test_without_patience_a_run_never_stops_early():
    state = TrainState()
    state.add_evaluation({"r@5": 0.5}, "r@5", patience=None)
    for _ in range(5):
        assert not state.add_evaluation({"r@5": 0.1}, "r@5", patience=None)
    assert not state.out_of_patience
