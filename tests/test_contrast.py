"""pianogpt/contrast.py: windows contrasted with another composer, and what training on it does."""
import numpy as np
import torch

from conftest import tiny_model
from pianogpt.contrast import composer_odds, contrast_rows, lm_and_contrast_loss

COUNT_ALL = torch.ones(64, dtype=torch.bool)


def test_each_contrasted_window_meets_another_composer_as_often_as_training_draws_it():
    composer = torch.tensor([3, 5, 0, 7, 5, 3, 9, 3])
    pieces = np.array([3, 3, 3, 5, 7, 7, 7, 7, 7, 7])  # composer 9 has no training pieces: never drawn
    odds = composer_odds(pieces, None, 10)
    assert odds.tolist() == [0, 0, 0, 0.3, 0, 0.1, 0, 0.6, 0, 0]
    drawn = []
    for seed in range(400):
        k, negatives, live = contrast_rows(composer, 0.5, odds, np.random.default_rng(seed))
        assert k == 4 and negatives.shape == (4,)
        assert set(negatives.tolist()) <= {3, 5, 7}
        assert all(n != own for n, own in zip(negatives.tolist(), composer[:4].tolist()))
        assert live.tolist() == [True, True, False, True]  # a dropped condition (0) has nothing to contrast
        drawn.append(negatives[0].item())
    # window 0 (composer 3) meets 5 and 7 in the odds 0.1 : 0.6
    assert abs(drawn.count(7) / len(drawn) - 6 / 7) < 0.05 and drawn.count(5) > 0


def test_without_weight_the_loss_is_the_language_models_own():
    model = tiny_model(n_composers=6)
    x = torch.randint(2, 64, (4, 16))
    y = torch.randint(2, 64, (4, 16))
    y[0, -3:] = 0  # PAD targets are ignored by both
    composer = torch.tensor([1, 2, 3, 4])
    _, own = model(x, composer, targets=y)
    contrast = (2, torch.tensor([5, 1]), torch.tensor([True, True]))
    total, lm = lm_and_contrast_loss(model, x, y, composer, None, None, contrast, COUNT_ALL, 0, 0.1, 0.0)
    torch.testing.assert_close(lm, own.detach())
    torch.testing.assert_close(total, own)


def test_contrast_training_makes_windows_likelier_under_their_own_composer():
    """A few steps on the contrast loss alone: each window's NLL under its own composer falls below
    its NLL under the other composer it is contrasted with."""
    model = tiny_model(n_composers=3, n_layer=1).train()
    x = torch.randint(2, 64, (8, 16))
    y = torch.randint(2, 64, (8, 16))
    composer = torch.tensor([1, 2] * 4)
    contrast = (8, 3 - composer, torch.ones(8, dtype=torch.bool))

    def margin():  # mean NLL under the other composer minus under the own one
        with torch.no_grad():
            own, real = model.target_nll(x, composer, y)
            other, _ = model.target_nll(x, 3 - composer, y)
        return ((other - own).sum() / real.sum()).item()

    before = margin()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        total, lm = lm_and_contrast_loss(model, x, y, composer, None, None, contrast, COUNT_ALL, 0, 0.0, 1.0)
        (total - lm).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert abs(before) < 0.01 and margin() > 0.1
