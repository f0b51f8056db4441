"""CLIPLoss is numerically open_clip's ClipLoss, and it learns; losses are chosen by name."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from finetune.cli import build_parser
from finetune.loss import LOSSES, CLIPLoss, create_loss
from finetune.train import FitConfig


@pytest.mark.parametrize("batch,dim,scale", [(8, 16, 1 / 0.07), (33, 64, 100.0), (2, 4, 1.0)])
def test_equals_open_clip_loss(batch, dim, scale):
    g = torch.Generator().manual_seed(batch)
    image = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
    logit_scale = torch.tensor(scale)

    ours = CLIPLoss()(image, text, logit_scale)
    theirs = open_clip.ClipLoss()(image, text, logit_scale)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-6)

    (g_ours_i, g_ours_t) = torch.autograd.grad(ours, (image, text))
    (g_theirs_i, g_theirs_t) = torch.autograd.grad(theirs, (image, text))
    torch.testing.assert_close(g_ours_i, g_theirs_i)
    torch.testing.assert_close(g_ours_t, g_theirs_t)


def test_matched_pairs_give_low_loss_and_shuffled_high():
    feats = F.normalize(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = CLIPLoss()
    aligned = loss(feats, feats, torch.tensor(100.0)).item()
    shuffled = loss(feats, feats.roll(1, dims=0), torch.tensor(100.0)).item()
    assert aligned < 0.01 < 5.0 < shuffled


def test_unknown_loss_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'Triplet'.*CLIPLoss"):
        create_loss("Triplet")


def test_fit_and_its_command_line_offer_exactly_the_registered_losses(capsys):
    assert FitConfig.choices()["loss"] == tuple(LOSSES)
    assert FitConfig().loss in LOSSES
    with pytest.raises(ValueError, match=r"loss must be one of \('CLIPLoss',\), got 'Triplet'"):
        FitConfig(train_data="pairs.csv", loss="Triplet").validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    assert "--loss {CLIPLoss}" in capsys.readouterr().out
