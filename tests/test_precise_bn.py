"""Precise BN: which layers it re-estimates, what it computes, and which stages it leaves alone."""
import timm
import torch

from mislas_timm import to_stage2
from mislas_timm.precise_bn import PRECISE_BN_IMAGES, precise_bn_batches, recompute_bn_stats, tracking_bn_layers
from .tolerances import assert_close_f32


def batches(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 16, 16, generator=g) * 3 + 1 for _ in range(n)]


def buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    data = batches()
    with torch.no_grad():  # a few momentum-0.1 steps: the statistics are still mostly mean 0 / variance 1
        model(data[0])
    before = buffers(model)
    assert recompute_bn_stats(model, iter(data)) == 3
    bn = model[0]
    means = torch.stack([x.mean((0, 2, 3)) for x in data])
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in data])
    assert_close_f32(bn.running_mean, means.mean(0), what='running_mean')
    assert_close_f32(bn.running_var, variances.mean(0), what='running_var')
    # Weights, momentum and the step count are left as they were.
    after = model.state_dict()
    for key in before:
        if 'running_' not in key:
            assert torch.equal(after[key], before[key]), key
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1
    # Re-estimated on one batch, eval mode normalises that batch as train mode does: the same statistics, up
    # to the unbiased variance stored (n / (n - 1), n = 8 x 16 x 16 values per channel).
    recompute_bn_stats(model.train(), iter([data[0]]))
    with torch.no_grad():
        evaluated, trained = model.eval()[0](data[0]), model.train()[0](data[0])
    n = data[0].numel() // 3
    assert (evaluated - trained).abs().max() <= trained.abs().max() * (1 - ((n - 1) / n) ** 0.5) * 1.01


def test_only_the_layers_a_stage_trained_are_re_estimated():
    model = timm.create_model('resnet20_cifar', num_classes=4)
    assert recompute_bn_stats(model.eval(), iter(batches())) == 0  # eval mode: no layer tracks
    frozen = to_stage2(model, head='mislas', shift_bn=False).train()
    assert tracking_bn_layers(frozen) == []
    before = buffers(frozen)
    assert recompute_bn_stats(frozen, iter(batches())) == 0
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    shifted = to_stage2(model, head='mislas', shift_bn=True).train()
    before = buffers(shifted)
    assert recompute_bn_stats(shifted, iter(batches())) == 3
    changed = {k for k, v in shifted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all('running_mean' in k or 'running_var' in k for k in changed)


def test_no_batch_leaves_the_statistics_as_they_were():
    model = timm.create_model('resnet20_cifar', num_classes=4).train()
    with torch.no_grad():
        model(batches(1)[0])
    before = buffers(model)
    assert recompute_bn_stats(model, iter([])) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_only_stages_shorter_than_the_threshold_get_a_pass():
    # The paper presets: 200 epochs x 97 steps, and stage 2's 10 x 98: untouched.
    assert precise_bn_batches(200 * 97, 200, 97, 128) == 0 and precise_bn_batches(10 * 98, 200, 98, 128) == 0
    assert precise_bn_batches(200, 200, 200, 128) == 0  # "shorter than": 200 steps is long enough
    assert precise_bn_batches(6, 0, 6, 128) == 0  # 0: never
    assert precise_bn_batches(6, 200, 6, 128) == 6  # a 1-epoch smoke run: one epoch of batches
    # At most PRECISE_BN_IMAGES images (199 steps of 256: 32 batches)
    assert precise_bn_batches(199, 200, 199, 256) == PRECISE_BN_IMAGES // 256
