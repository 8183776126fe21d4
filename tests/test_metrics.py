import math
import time

import pytest
import torch

from mislas_timm import calibration_report, ece
from mislas_timm.metrics import REPORT_KEYS, class_groups, reliability_bins


def loop_ece(probs, labels, n_bins=15):
    """ECE by the definition, with a Python loop over bins (lo, hi]."""
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc = (pred[mask] == labels[mask]).double().mean()
            total += mask.double().mean() * abs(acc - conf[mask].double().mean())
    return float(total)


def test_ece_matches_definition():
    torch.manual_seed(0)
    probs = torch.randn(2000, 10).mul(3).softmax(1)
    labels = torch.randint(0, 10, (2000,))
    assert ece(probs, labels) == pytest.approx(loop_ece(probs, labels), abs=1e-12)


def test_ece_hand_computed_and_bin_edges():
    # conf 1/15 exactly falls in bin 0 = (0, 1/15]; 0.9 (correct) and 0.6 (wrong) in their bins.
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    # bins: {0.9: acc 1, conf .9}, {0.6, 0.6: acc .5, conf .6}
    assert ece(probs, labels) == pytest.approx(1 / 3 * 0.1 + 2 / 3 * 0.1)
    bins = reliability_bins(torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64), torch.tensor([0]), n_bins=3)
    assert bins['counts'] == [0, 1, 0]  # 2/3 is the upper edge of bin (1/3, 2/3]


def test_report_keys_and_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 0, 2])
    r = calibration_report(probs, labels, class_counts=[500, 50, 5], rank_split=[1, 2])
    assert set(REPORT_KEYS) - {'split', 'dataset', 'wall_time_s', 'images_per_s'} == set(r)
    assert r['top1'] == 0.5 and r['num_samples'] == 4
    assert r['top5'] == 1.0
    assert r['nll'] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.1)) / 4, abs=1e-6)
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2)
             + (0.7 ** 2 + 0.3 ** 2 + 0.4 ** 2) + (0.5 ** 2 + 0.4 ** 2 + 0.9 ** 2)) / 4
    assert r['brier'] == pytest.approx(brier, abs=1e-6)
    assert r['per_class_top1'] == [0.5, 1.0, 0.0]
    assert (r['many_top1'], r['medium_top1'], r['few_top1']) == (0.5, 1.0, 0.0)
    assert (r['head_top1'], r['med_top1'], r['tail_top1']) == (0.5, 1.0, 0.0)
    assert r['mce'] >= r['ece']


def test_empty_group_is_none():
    probs = torch.eye(3)[[0, 1, 2]].float() * 0.9 + 0.1 / 3
    r = calibration_report(probs, torch.tensor([0, 1, 2]), class_counts=[5000, 500, 50], rank_split=[1, 2])
    assert r['few_top1'] is None and r['medium_top1'] == 1.0
    r = calibration_report(probs, torch.tensor([0, 1, 2]))
    assert r['many_top1'] is None and r['head_top1'] is None and r['class_counts'] is None


def test_class_groups_by_rank():
    assert class_groups([5, 500, 50, 5000], [1, 3]) == ['tail', 'medium', 'medium', 'head']


@pytest.mark.parametrize('probs,labels,match', [
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 'probabilities'),
    (torch.full((4, 3), 1 / 3), torch.zeros(5, dtype=torch.long), 'labels must have shape'),
    (torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2, 3]), 'labels must lie'),
    (torch.full((4,), 1 / 3), torch.zeros(4, dtype=torch.long), 'probs must have shape'),
    (torch.full((2, 3), 1 / 3), torch.tensor([0.0, 1.0]), 'integer'),
])
def test_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        ece(probs, labels)


def test_large_report_runs():
    # The speed target lives in BENCHMARKS.md; here only that a 1000-class report is correct in shape.
    probs = torch.randn(5000, 1000).softmax(1)
    labels = torch.randint(0, 1000, (5000,))
    counts = torch.randint(5, 1280, (1000,)).tolist()
    r = calibration_report(probs, labels, counts, [390, 835])
    assert len(r['per_class_top1']) == 1000 and 0 <= r['ece'] <= 1
