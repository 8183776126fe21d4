"""benchmarks/ece_spread.py: the calibrated floor separates noise from miscalibration."""
from __future__ import annotations

import torch

from .conftest import load_benchmark


def _model(n: int, k: int, sharpen: float, seed: int = 0):
    """Probabilities and labels drawn from them (calibrated), then sharpened by ``sharpen`` (over-confident > 1)."""
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, k, generator=g) * 2).softmax(dim=1).double()
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return (probs.log() * sharpen).softmax(dim=1), labels


def test_calibrated_model_sits_at_its_floor_and_an_overconfident_one_above_it():
    spread = load_benchmark('ece_spread').spread
    calibrated = spread(*_model(4000, 5, 1.0), resamples=60, seed=0)
    assert calibrated['ece'] < 2 * calibrated['calibrated_floor_mean']  # noise alone, the floor's size
    over = spread(*_model(4000, 5, 2.0), resamples=60, seed=0)
    assert over['ece'] > 3 * over['calibrated_floor_95']
    assert over['mean_confidence'] > over['top1']
    assert 0 < over['calibrated_floor_mean'] <= over['calibrated_floor_95']
    # the over-confidence is real: many test-set SDs above what a calibrated model scores
    assert 0 < over['test_set_sd'] and over['ece'] - over['calibrated_floor_95'] > 10 * over['test_set_sd']
    assert 0 < calibrated['test_set_sd'] < calibrated['calibrated_floor_mean']
