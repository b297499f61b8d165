"""The shared segmentation losses on cases whose values are known by hand."""
import pytest
import torch

from training.lesion_data.segmentation_losses import (dice_ce_loss, generalised_dice_loss,
                                                      hardness_aware_generalised_dice_loss, one_hot,
                                                      soft_dice_loss, weighted_cross_entropy)


def _target():
    t = torch.zeros(1, 8, 8, dtype=torch.long)
    t[0, 2:4, 2:6] = 1  # 8 lesion voxels of 64
    return t


def test_perfect_prediction_gives_zero_and_wrong_gives_one():
    g = one_hot(_target(), 2)
    assert float(soft_dice_loss(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(generalised_dice_loss(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(1 - g, g)) == pytest.approx(1.0, abs=1e-6)
    assert float(generalised_dice_loss(1 - g, g)) == pytest.approx(1.0, abs=1e-6)


def test_soft_dice_by_hand():
    g = one_hot(_target(), 2)
    p = g.clone()
    p[0, 1] = 0.5 * g[0, 1]  # lesion predicted at probability 0.5 everywhere it is
    p[0, 0] = 1 - p[0, 1]
    # Dice = 2 * 8 * 0.5 / (8 * 0.5 + 8) = 2/3
    assert float(soft_dice_loss(p, g)) == pytest.approx(1 / 3, rel=1e-5)


def test_generalised_dice_weights_a_small_lesion_like_the_background():
    g = one_hot(_target(), 2)
    miss = g.clone()
    miss[0, 1] = 0
    miss[0, 0] = 1  # everything called background: the mean Dice over both classes is still 0.47
    loss = float(generalised_dice_loss(miss, g))
    # by hand: w0 = 1/56^2, w1 = 1/8^2; num = w0*56; den = w0*(64+56) + w1*8
    w0, w1 = 1 / 56 ** 2, 1 / 8 ** 2
    assert loss == pytest.approx(1 - 2 * w0 * 56 / (w0 * 120 + w1 * 8), rel=1e-5)
    both_classes = float(soft_dice_loss(miss, g, include_background=True))  # 1 - (0.933 + 0) / 2
    assert both_classes == pytest.approx(1 - 56 / 120, rel=1e-5)
    assert loss > both_classes + 0.2


def test_hardness_weights_make_the_wrong_voxels_count_more():
    g = one_hot(_target(), 2)
    p = g.clone()
    p[0, 1, 2, 2], p[0, 0, 2, 2] = 0.0, 1.0  # one missed lesion voxel
    plain = float(hardness_aware_generalised_dice_loss(p, g, lam=0.0))
    hard = float(hardness_aware_generalised_dice_loss(p, g, lam=0.9))
    assert plain == pytest.approx(float(generalised_dice_loss(p, g)), rel=1e-6)
    assert hard > plain
    with pytest.raises(ValueError):
        hardness_aware_generalised_dice_loss(p, g, lam=1.5)


def test_weighted_cross_entropy_and_dice_ce_gradients():
    t = _target()
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    ce = weighted_cross_entropy(logits, t).detach()
    assert float(ce) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-6)
    # with weights the per-voxel losses are equal, so the weighted mean is unchanged
    assert float(weighted_cross_entropy(logits, t, [1.0, 5.0]).detach()) == pytest.approx(float(ce), rel=1e-6)
    loss = dice_ce_loss(logits, t, [1.0, 3.0])
    loss.backward()
    assert logits.grad[0, 1, 2, 2] < 0 < logits.grad[0, 1, 7, 7]  # raise lesion logits inside, lower outside
