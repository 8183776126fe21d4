import copy

import pytest
import timm
import torch
import torch.nn as nn

import mislas_timm
from mislas_timm import LabelAwareSmoothing, fold_head, shift_bn, to_stage2
from mislas_timm.stage2 import head_parameter_groups
from .tolerances import assert_close_f32


def trained_like(name='resnet20_cifar', num_classes=10, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    # Non-trivial BN statistics and classifier, as after stage 1.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def one_step(model, x, y, lr=0.1):
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = LabelAwareSmoothing([100, 60, 30, 20, 10, 9, 8, 7, 6, 5], 0.3, 0.0)(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_input_model_untouched_and_backbone_frozen():
    model = trained_like()
    before = copy.deepcopy(model.state_dict())
    stage2 = to_stage2(model, head='mislas', shift_bn=True)
    one_step(stage2, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())
    trainable = {n for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {'fc.fc.weight', 'fc.fc.bias', 'fc.lws.scale'}
    assert isinstance(stage2, type(model))


def test_shift_bn_updates_running_stats_only():
    model = trained_like()
    stage2 = to_stage2(model, head='mislas', shift_bn=True)
    before = copy.deepcopy(stage2.state_dict())
    stage2.train()
    assert stage2.bn1.training and not stage2.layer1[0].conv1.training
    one_step(stage2, torch.randn(8, 3, 32, 32) * 2 + 1, torch.randint(0, 10, (8,)))
    after = stage2.state_dict()
    moved = [k for k in after if 'running_' in k and not torch.equal(after[k], before[k])]
    assert len(moved) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in stage2.modules())
    for k in after:
        if k.startswith('fc.') or 'running_' in k or 'num_batches_tracked' in k:
            continue
        assert torch.equal(after[k], before[k]), f'{k} changed in stage 2'
    bn = stage2.bn1
    # EMA with BN's own momentum from the stage-1 statistics (checked on the stem BN).
    assert not torch.equal(bn.running_mean, before['bn1.running_mean'])


def test_without_shift_bn_everything_but_the_head_is_bit_identical():
    stage2 = to_stage2(trained_like(), head='mislas', shift_bn=False)
    before = copy.deepcopy(stage2.state_dict())
    stage2.train()
    assert not stage2.bn1.training and stage2.fc.training
    one_step(stage2, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    after = stage2.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {'fc.fc.weight', 'fc.fc.bias', 'fc.lws.scale'}


def test_shift_bn_function_freezes_affine():
    model = trained_like().eval()
    shift_bn(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    assert model.fc.weight.requires_grad


def test_heads():
    model = trained_like()
    lws = to_stage2(model, head='lws')
    assert {n for n, p in lws.named_parameters() if p.requires_grad} == {'fc.lws.scale'}
    assert torch.equal(lws.fc.fc.weight, model.fc.weight)
    crt = to_stage2(model, head='crt', shift_bn=False)
    assert crt.fc.lws is None and not torch.equal(crt.fc.fc.weight, model.fc.weight)
    mislas = to_stage2(model)
    x = torch.randn(3, 3, 32, 32)
    # s initialised to 1: the stage-2 model starts with the stage-1 logits.
    assert_close_f32(mislas.eval()(x), model(x), what='stage-2 start')
    groups = head_parameter_groups(mislas, lr=0.1, lr_factor=0.5)
    assert [g['lr'] for g in groups] == [0.05, 0.1] and len(groups[0]['params']) == 2
    assert [g['lr'] for g in head_parameter_groups(crt, 0.1, 0.5)] == [0.1]


@pytest.mark.parametrize('arch,kwargs,size', [
    ('resnet20_cifar', {}, 32),
    ('resnet18', {}, 32),
    ('convnext_atto', {}, 32),
    ('vit_tiny_patch16_224', {'img_size': 32, 'patch_size': 8}, 32),
])
def test_fold_head_any_timm_model(arch, kwargs, size):
    model = trained_like(arch, num_classes=5, **kwargs)
    stage2 = to_stage2(model, head='mislas', shift_bn=True)
    with torch.no_grad():
        head = stage2.get_classifier()
        assert isinstance(head, mislas_timm.ScaledLinearHead)
        head.lws.scale.copy_(torch.tensor([0.5, 1.5, 2.0, 0.7, 1.1]))
        stage2.get_classifier().fc.weight.add_(0.1)
    x = torch.randn(2, 3, size, size)
    folded = fold_head(stage2)
    stage2.eval()
    folded.eval()
    assert type(folded) is type(model)
    assert isinstance(folded.get_classifier(), nn.Linear)
    assert_close_f32(folded(x), stage2(x), what='folded vs stage-2 logits')
    fresh = timm.create_model(arch, num_classes=5, **kwargs)
    fresh.load_state_dict(folded.state_dict(), strict=True)
    assert_close_f32(fresh.eval()(x), stage2(x), what='reloaded vs stage-2 logits')
    assert all(p.requires_grad for p in folded.parameters())


def test_bad_input():
    with pytest.raises(TypeError, match='get_classifier'):
        to_stage2(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(TypeError, match='num_classes=K'):
        to_stage2(timm.create_model('resnet20_cifar', num_classes=0))
    with pytest.raises(ValueError, match='head must be one of'):
        to_stage2(trained_like(), head='tau')
    stage2 = to_stage2(trained_like())
    with pytest.raises(ValueError, match='already a stage-2'):
        to_stage2(stage2)
    with pytest.raises(TypeError, match='to_stage2'):
        fold_head(trained_like())
