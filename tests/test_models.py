import pytest
import timm
import torch

import mislas_timm  # noqa: F401  registers the family

CIFAR_MODELS = ['resnet20_cifar', 'resnet32_cifar', 'resnet44_cifar', 'resnet56_cifar', 'resnet110_cifar']


def test_registered_with_timm():
    assert sorted(timm.list_models('*_cifar')) == sorted(CIFAR_MODELS)
    assert set(CIFAR_MODELS) <= set(timm.list_models(module='resnet_cifar'))


def test_resnet32_matches_paper_size_and_depth():
    model = timm.create_model('resnet32_cifar')
    assert sum(p.numel() for p in model.parameters()) == 464_154  # "0.46 M"
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 32  # 31 convs + fc
    assert [m.out_channels for m in (model.layer1[0].conv1, model.layer2[0].conv1, model.layer3[0].conv1)] == [16, 32, 64]


@pytest.mark.parametrize('name,blocks', [('resnet20_cifar', 3), ('resnet56_cifar', 9), ('resnet110_cifar', 18)])
def test_depths(name, blocks):
    model = timm.create_model(name)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == blocks


def test_timm_classifier_api():
    model = timm.create_model('resnet32_cifar', num_classes=100, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 100)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    assert model.get_classifier().out_features == 100
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


def test_default_cfg_is_cifar():
    cfg = timm.create_model('resnet32_cifar').pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32)
    assert cfg['mean'] == (0.4914, 0.4822, 0.4465) and cfg['std'] == (0.2023, 0.1994, 0.2010)
    assert cfg['crop_pct'] == 1.0
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model('resnet32_cifar'))
    transform = timm.data.create_transform(**data_cfg)
    from PIL import Image
    assert transform(Image.new('RGB', (32, 32))).shape == (3, 32, 32)


def test_option_a_shortcut_has_no_parameters():
    model = timm.create_model('resnet32_cifar')
    assert not list(model.layer2[0].shortcut.parameters())
    x = torch.randn(1, 16, 32, 32)
    out = model.layer2[0].shortcut(x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()


def test_features_only_and_checkpoint_filter():
    feats = timm.create_model('resnet20_cifar', features_only=True)(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [16, 16, 32, 64]
    model = timm.create_model('resnet20_cifar')
    ref = {('module.' + k).replace('module.fc.', 'module.linear.'): v for k, v in model.state_dict().items()}
    from mislas_timm.models import checkpoint_filter_fn
    fresh = timm.create_model('resnet20_cifar')
    fresh.load_state_dict(checkpoint_filter_fn(ref, fresh), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
