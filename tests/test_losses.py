import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mislas_timm import LabelAwareSmoothing, las_smoothing, mixup_batch, mixup_cross_entropy
from .tolerances import assert_close_f32, scale_of

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def reference_smooth(counts, head, tail, shape, power=None):
    """DESIGN.md section 1, written out with NumPy, element by element."""
    n1, nk = max(counts), min(counts)
    out = []
    for n in counts:
        t = (n - nk) / (n1 - nk)
        if shape == 'concave':
            out.append(tail + (head - tail) * math.sin(math.pi * (n - nk) / (2 * (n1 - nk))))
        elif shape == 'linear':
            out.append(tail + (head - tail) * t)
        elif shape == 'convex':
            out.append(head + (head - tail) * math.sin(3 * math.pi / 2 + math.pi * (n - nk) / (2 * (n1 - nk))))
        else:
            out.append(tail + (head - tail) * t ** power)
    return out


@pytest.mark.parametrize('shape,power', [('concave', None), ('linear', None), ('convex', None), ('exp', 2.0), ('exp', 0.5)])
def test_smoothing_shapes_match_formulas(shape, power):
    got = las_smoothing(COUNTS, 0.4, 0.1, shape, power)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_smooth(COUNTS, 0.4, 0.1, shape, power), rtol=1e-12, atol=0)
    assert got[0] == pytest.approx(0.4) and got[-1] == pytest.approx(0.1)


def test_concave_value_pinned():
    # eps for N = 1077 on CIFAR-10-LT IF100 with eps_1 = 0.3, eps_K = 0: 0.3 * sin(pi/2 * 1027/4950)
    got = float(las_smoothing(COUNTS, 0.3, 0.0, 'concave')[3])
    assert got == pytest.approx(0.3 * math.sin(math.pi / 2 * 1027 / 4950), abs=1e-15)
    assert got == pytest.approx(0.096049, abs=1e-6)


def test_shapes_are_ordered():
    concave = las_smoothing(COUNTS, 0.3, 0.0, 'concave')
    linear = las_smoothing(COUNTS, 0.3, 0.0, 'linear')
    convex = las_smoothing(COUNTS, 0.3, 0.0, 'convex')
    inner = slice(1, -1)
    assert bool((concave[inner] > linear[inner]).all()) and bool((linear[inner] > convex[inner]).all())


def test_balanced_data_gets_head_smoothing_everywhere():
    got = las_smoothing([100, 100, 100], 0.3, 0.1, 'concave')
    assert got.tolist() == [0.3, 0.3, 0.3]
    loss = LabelAwareSmoothing([100, 100, 100], 0.3, 0.1)
    assert torch.isfinite(loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])))


@pytest.mark.parametrize('kwargs,match', [
    (dict(cls_num_list=[10, 0, 5]), 'no training samples'),
    (dict(cls_num_list=[10]), '>= 2 classes'),
    (dict(cls_num_list=[10, 5], smooth_head=1.0), 'smooth_head'),
    (dict(cls_num_list=[10, 5], shape='wavy'), 'shape'),
    (dict(cls_num_list=[10, 5], shape='exp'), 'power'),
    (dict(cls_num_list=[10, 5], formulation='mine'), 'formulation'),
])
def test_bad_arguments(kwargs, match):
    args = dict(cls_num_list=[10, 5], smooth_head=0.3, smooth_tail=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LabelAwareSmoothing(**args)


def test_official_formulation_equals_reference_code():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    loss = LabelAwareSmoothing(COUNTS, 0.3, 0.0, formulation='official')(logits, target)
    eps = las_smoothing(COUNTS, 0.3, 0.0).float()[target]
    logp = F.log_softmax(logits, dim=-1)
    ref = ((1 - eps) * -logp[torch.arange(16), target] + eps * -logp.mean(dim=-1)).mean()
    assert_close_f32(loss, ref, what='official LAS')
    # It is timm's LabelSmoothingCrossEntropy when every class has the same eps.
    from timm.loss import LabelSmoothingCrossEntropy
    flat = LabelAwareSmoothing([50, 50, 50, 50, 50, 50, 50, 50, 50, 50], 0.2, 0.0)(logits, target)
    assert_close_f32(flat, LabelSmoothingCrossEntropy(0.2)(logits, target), what='flat LAS vs timm')


def test_paper_formulation_is_cross_entropy_with_q():
    torch.manual_seed(1)
    logits, target = torch.randn(8, 10), torch.randint(0, 10, (8,))
    eps = las_smoothing(COUNTS, 0.3, 0.1).float()[target]
    q = (eps / 9)[:, None].repeat(1, 10)
    q[torch.arange(8), target] = 1 - eps
    ref = -(q * F.log_softmax(logits, dim=-1)).sum(dim=1).mean()
    got = LabelAwareSmoothing(COUNTS, 0.3, 0.1, formulation='paper')(logits, target)
    assert_close_f32(got, ref, what='paper LAS')


@pytest.mark.parametrize('formulation', ['paper', 'official'])
def test_closed_form_optimum(formulation):
    """Minimising the loss over free logits of one sample reaches the closed-form logit gap."""
    k, eps = 10, 0.3
    loss_fn = LabelAwareSmoothing([100, 100] + [50] * (k - 2), eps, 0.0, formulation=formulation)
    target = torch.tensor([0])  # a head class: eps_y = 0.3
    logits = torch.zeros(1, k, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        return loss
    opt.step(closure)
    gap = float((logits[0, 0] - logits[0, 1:].mean()).detach())
    if formulation == 'paper':
        expected = math.log((k - 1) * (1 - eps) / eps)  # q_y = 1 - eps, others eps / (K - 1)
    else:
        expected = math.log((1 - eps + eps / k) / (eps / k))  # q_y = 1 - eps + eps / K, others eps / K
    assert gap == pytest.approx(expected, rel=1e-3)  # an optimiser's result: loose, but relative
    assert float(logits[0, 1:].detach().std()) < 1e-4 * scale_of(logits)


def test_loss_rejects_bad_shapes_and_labels():
    loss = LabelAwareSmoothing(COUNTS, 0.3, 0.0)
    with pytest.raises(ValueError, match='logits must have shape'):
        loss(torch.randn(4, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='target must have shape'):
        loss(torch.randn(4, 10), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='outside'):
        loss(torch.randn(2, 10), torch.tensor([0, 10]))


def test_mixup_is_ce_against_mixed_targets():
    rng = np.random.default_rng(0)
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, y_a, y_b, lam = mixup_batch(x, y, 1.0, rng)
    assert 0 < lam < 1 and torch.equal(y_a, y)
    perm = [int((y == v).nonzero()) for v in y_b]
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    logits = torch.randn(6, 6)
    soft = lam * F.one_hot(y_a, 6) + (1 - lam) * F.one_hot(y_b, 6)
    expected = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
    assert_close_f32(mixup_cross_entropy(logits, y_a, y_b, lam), expected, what='mixup CE')
    # Same generator state, same draw.
    again = mixup_batch(x, y, 1.0, np.random.default_rng(0))
    assert again[3] == lam and torch.equal(again[0], mixed)
    assert mixup_batch(x, y, 0.0)[3] == 1.0
