import math
import time
import warnings

import numpy as np
import pytest
import torch

from mislas_timm import calibration_report, ece
from mislas_timm.metrics import REPORT_KEYS, adaptive_ece, check_probs, class_groups, classwise_ece, reliability_bins


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


def test_bf16_probabilities_are_probabilities():
    # A bf16 softmax row sums to 1 only within bf16's rounding (~0.4%), not within 1e-3.
    logits = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0)) * 3
    probs = logits.softmax(1).bfloat16()
    assert float((probs.double().sum(1) - 1).abs().max()) > 1e-3  # the case the tolerance is for
    labels = torch.randint(0, 100, (1000,), generator=torch.Generator().manual_seed(1))
    for metric in (ece, adaptive_ece, classwise_ece):
        assert 0 <= metric(probs, labels) <= 1
    with pytest.raises(ValueError, match='probabilities'):
        ece(logits.bfloat16(), labels)  # bf16 logits are still refused


def test_large_report_runs():
    # The speed target lives in BENCHMARKS.md; here only that a 1000-class report is correct in shape.
    probs = torch.randn(5000, 1000).softmax(1)
    labels = torch.randint(0, 1000, (5000,))
    counts = torch.randint(5, 1280, (1000,)).tolist()
    r = calibration_report(probs, labels, counts, [390, 835])
    assert len(r['per_class_top1']) == 1000 and 0 <= r['ece'] <= 1


# --- adaptive and classwise ECE ------------------------------------------------------------------

def loop_adaptive_ece(probs, labels, n_bins=15):
    """Adaptive ECE by the definition: stable sort by confidence, numpy.array_split, loop over bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    n = len(labels)
    total = 0.0
    for b in np.array_split(np.argsort(conf, kind='stable'), n_bins):
        if len(b):
            total += len(b) / n * abs(np.mean(pred[b] == labels[b]) - np.mean(conf[b]))
    return total


def loop_classwise_ece(probs, labels, n_bins=15):
    """Classwise ECE by the definition: loops over classes and bins (lo, hi], p = 0 in the first bin."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, num_classes = probs.shape
    per_class = []
    for k in range(num_classes):
        p, y = probs[:, k], (labels == k).astype(np.float64)
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            mask = (p <= hi) if b == 0 else ((p > lo) & (p <= hi))
            if mask.any():
                total += mask.sum() / n * abs(y[mask].mean() - p[mask].mean())
        per_class.append(total)
    return float(np.mean(per_class))


def random_case(n, num_classes, seed, dtype=torch.float32):
    """Rows from sharp to nearly uniform (so some rows have many entries above 1/n_bins), with ties
    in confidence (repeated rows), one-hot rows (p exactly 0 and 1) and a row with exact zeros."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) * 6
    probs = (torch.randn(n, num_classes, generator=g, dtype=torch.float64) * scale).softmax(1)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    if n >= 6:
        probs[n // 2:n // 2 + 3] = probs[0]  # three ties with row 0, different labels
        probs[1] = 0.0
        probs[1, labels[1]] = 1.0  # p exactly 1 (correct) and exactly 0
        probs[2] = 0.0
        probs[2, (labels[2] + 1) % num_classes] = 1.0  # p exactly 1, wrong
        probs[3] = 0.0
        probs[3, :2] = 0.5  # exact zeros, confidence 0.5 tied within the row
        labels[3] = 0
    return probs.to(dtype), labels


CASES = [  # n, K, n_bins
    (1, 2, 15), (5, 3, 15), (14, 4, 15), (15, 4, 15), (16, 4, 15), (50, 4, 10), (500, 10, 15),
    (2000, 37, 15), (300, 100, 20), (400, 10, 20), (1000, 5, 1), (64, 8, 3), (257, 50, 100), (301, 2, 7),
]


@pytest.mark.parametrize('n,num_classes,n_bins', CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_adaptive_ece_matches_definition(n, num_classes, n_bins, dtype):
    probs, labels = random_case(n, num_classes, seed=n + num_classes, dtype=dtype)
    expected = loop_adaptive_ece(probs.numpy(), labels.numpy(), n_bins)
    assert adaptive_ece(probs, labels, n_bins) == pytest.approx(expected, rel=1e-6, abs=1e-15)
    assert adaptive_ece(probs.numpy(), labels.numpy(), n_bins) == pytest.approx(expected, rel=1e-6, abs=1e-15)


@pytest.mark.parametrize('n,num_classes,n_bins', CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_classwise_ece_matches_definition(n, num_classes, n_bins, dtype):
    probs, labels = random_case(n, num_classes, seed=n + num_classes, dtype=dtype)
    expected = loop_classwise_ece(probs.numpy(), labels.numpy(), n_bins)
    assert classwise_ece(probs, labels, n_bins) == pytest.approx(expected, rel=1e-6, abs=1e-15)
    assert classwise_ece(probs.numpy(), labels.numpy(), n_bins) == pytest.approx(expected, rel=1e-6, abs=1e-15)


def test_classwise_ece_rows_with_many_upper_entries():
    # Rows with more than 5 entries above 1/n_bins are binned from the whole row, not from the top 5.
    probs, labels = random_case(400, 10, seed=3)
    assert int(((probs > 1 / 20).sum(1) > 5).sum()) > 20
    assert classwise_ece(probs, labels, 20) == pytest.approx(loop_classwise_ece(probs.numpy(), labels.numpy(), 20),
                                                             rel=1e-6)


def test_adaptive_and_classwise_hand_computed():
    # 4 samples, 2 bins of 2 after sorting by confidence [0.6, 0.6 | 0.8, 0.9]
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # low bin: rows 1, 3: acc 1, conf 0.6; high bin: rows 2, 0: acc 0.5, conf 0.85
    assert adaptive_ece(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.4 + 0.5 * 0.35)
    # class 0, bins (0, .5], (.5, 1]: p_0 = [.9, .6, .8, .4]; low {.4}: y=0 vs .4; high {.9,.6,.8}: 2/3 vs .7667
    ece_0 = 1 / 4 * 0.4 + 3 / 4 * abs(2 / 3 - (0.9 + 0.6 + 0.8) / 3)
    # class 1: p_1 = [.1, .4, .2, .6]; low {.1,.4,.2}: 1/3 vs .2333; high {.6}: 1 vs .6
    ece_1 = 3 / 4 * abs(1 / 3 - 0.7 / 3) + 1 / 4 * 0.4
    assert classwise_ece(probs, labels, n_bins=2) == pytest.approx((ece_0 + ece_1) / 2)


def test_calibrated_small_overconfident_large():
    g = torch.Generator().manual_seed(0)
    n, num_classes = 50000, 5
    probs = (torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 1.5).softmax(1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # y ~ p: perfectly calibrated
    sharp = (probs.log() * 3).softmax(1)  # same labels, over-confident probabilities
    for fn in (ece, adaptive_ece, classwise_ece):
        calibrated, overconfident = fn(probs, labels), fn(sharp, labels)
        assert calibrated < 0.015, fn.__name__
        assert overconfident > 0.05, fn.__name__
        assert overconfident > 10 * calibrated, fn.__name__


def test_report_has_adaptive_and_classwise():
    probs, labels = random_case(3000, 200, seed=7)
    r = calibration_report(probs, labels, n_bins=15)
    assert {'adaptive_ece', 'classwise_ece'} <= set(REPORT_KEYS)
    assert r['adaptive_ece'] == pytest.approx(adaptive_ece(probs, labels), rel=1e-9)  # row 3's tie: first max
    assert r['ece'] == pytest.approx(ece(probs, labels), rel=1e-9)
    assert r['classwise_ece'] == pytest.approx(loop_classwise_ece(probs.numpy(), labels.numpy()), rel=1e-6)
    assert 0 <= r['classwise_ece'] <= 1 and 0 <= r['adaptive_ece'] <= 1
    r64 = calibration_report(probs.double(), labels)  # float64 input is not rounded to float32 first
    assert r64['ece'] == pytest.approx(ece(probs.double(), labels), rel=1e-12)


def test_requires_grad_tensors_give_no_warning():
    logits = torch.randn(64, 6, requires_grad=True)
    probs = logits.softmax(1)
    labels = torch.randint(0, 6, (64,))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        values = [ece(probs, labels), adaptive_ece(probs, labels), classwise_ece(probs, labels)]
        report = calibration_report(probs, labels, class_counts=[50, 40, 30, 20, 10, 5], rank_split=[2, 4])
        reliability_bins(probs, labels)
        check_probs(probs, labels)
    assert values == pytest.approx([report['ece'], report['adaptive_ece'], report['classwise_ece']], rel=1e-12)
    assert probs.requires_grad and probs.grad_fn is not None  # the input is left as it was


@pytest.mark.parametrize('fn', [ece, adaptive_ece, classwise_ece, calibration_report, reliability_bins])
@pytest.mark.parametrize('as_numpy', [False, True])
def test_logits_refused_with_one_line_message(fn, as_numpy):
    logits = torch.randn(32, 5) * 3
    labels = torch.randint(0, 5, (32,))
    if as_numpy:
        logits, labels = logits.numpy(), labels.numpy()
    with pytest.raises(ValueError, match='probabilities') as info:
        fn(logits, labels)
    message = str(info.value)
    assert '\n' not in message and 'softmax' in message


def test_other_inputs_refused():
    probs, labels = random_case(10, 3, seed=0)
    with pytest.raises(TypeError, match='numpy array'):
        adaptive_ece(probs.tolist(), labels)
    with pytest.raises(ValueError, match='n_bins'):
        classwise_ece(probs, labels, n_bins=0)
    with pytest.raises(ValueError, match='integer'):
        classwise_ece(probs, labels.float())
