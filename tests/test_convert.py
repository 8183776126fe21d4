"""Converting MiSLAS reference checkpoints (``.pth.tar``) into Hub folders.

The reference models are rebuilt here independently of the package: a reference-style CIFAR
ResNet-32 (option-A shortcuts, a ``linear`` head the reference never uses), torchvision ResNet-50 /
ResNet-152 backbones, a torchvision ``Bottleneck`` as the Places-LT extra block, a ``Classifier``
holding ``fc`` and the LWS ``learned_norm``. Their logits are computed the reference's way
(features -> [block -> pool] -> fc -> * learned_norm) and compared with the converted models.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mislas_timm
from mislas_timm.convert import convert_checkpoint, convert_to_hub_folder, load_reference_checkpoint, main

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # rtol and atol together: |a - b| <= 1e-5 + 1e-5 * |b|, relative for logits of any scale
UNSAFE_MESSAGE = 'holds objects other than tensors and NumPy scalars'


# ---------------------------------------------------------------- reference-style models

class RefBasicBlock(nn.Module):
    """The reference CIFAR basic block: option-A shortcut (subsample, zero-pad planes // 4 each side)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


class RefCifarResNet32(nn.Module):
    """The reference ``resnet32`` backbone: returns pooled 64-d features; ``linear`` is never used."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            blocks = [RefBasicBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1) for b in range(5)]
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
            in_planes = planes
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.avg_pool2d(out, out.size(3)).flatten(1)


class RefClassifier(nn.Module):
    def __init__(self, feat_in: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(feat_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class RefLWS(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.learned_norm = nn.Parameter(torch.ones(1, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learned_norm * x


def _randomize(*modules: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics / affines and LWS scales, so every tensor affects the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                elif isinstance(m, RefLWS):
                    m.learned_norm.copy_(0.5 + torch.rand(m.learned_norm.shape, generator=gen))
            module.eval()


def _module_prefixed(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return OrderedDict(('module.' + k, v) for k, v in state.items())


def _reference_checkpoint(backbone: nn.Module, classifier: nn.Module, lws: Optional[nn.Module] = None,
                          block: Optional[nn.Module] = None, prefix: bool = True) -> dict:
    wrap = _module_prefixed if prefix else dict
    checkpoint = {
        'epoch': 10,
        'state_dict_model': wrap(backbone.state_dict()),
        'state_dict_classifier': wrap(classifier.state_dict()),
        'best_acc1': torch.tensor(52.25),
        'its_ece': np.float64(3.125),
    }
    if lws is not None:
        checkpoint['state_dict_lws_model'] = wrap(lws.state_dict())
    if block is not None:
        checkpoint['state_dict_block'] = wrap(block.state_dict())
    return checkpoint


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _load_folder(folder: Path) -> nn.Module:
    return mislas_timm.load_model(str(folder))


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """A stage-2 CIFAR ResNet-32 checkpoint (module. prefixes, learned_norm != 1) and its reference logits."""
    torch.manual_seed(0)
    backbone, classifier, lws = RefCifarResNet32(), RefClassifier(64, 10), RefLWS(10)
    _randomize(backbone, classifier, lws)
    path = tmp_path_factory.mktemp('ckpt') / 'ckpt.best.pth.tar'
    torch.save(_reference_checkpoint(backbone, classifier, lws), path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        unscaled = classifier(backbone(x))
        expected = lws(unscaled)
    return dict(path=path, x=x, expected=expected, unscaled=unscaled)


# ---------------------------------------------------------------- successful conversions

def test_cifar_stage2_via_cli_matches_reference_logits(cifar, tmp_path):
    out = tmp_path / 'hub'
    labels = [f'c{i}' for i in range(10)]
    result = subprocess.run(
        [sys.executable, '-m', 'mislas_timm.convert', str(cifar['path']), str(out), '--arch', 'resnet32_cifar',
         '--num-classes', '10', '--label-names', ','.join(labels)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']

    model = _load_folder(out)
    torch.testing.assert_close(_logits(model, cifar['x']), cifar['expected'], atol=TOL, rtol=TOL)
    assert not torch.allclose(cifar['unscaled'], cifar['expected'], atol=1e-3)  # the LWS fold matters

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'resnet32_cifar'
    assert config['label_names'] == labels
    assert config['mislas'] == {
        'converted_from': 'ckpt.best.pth.tar', 'source_epoch': 10, 'source_best_acc1': 52.25, 'source_ece': 3.125,
        'stage': 2, 'class_counts': None, 'rank_split': None}
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 32, 32] and cfg['crop_pct'] == 1.0
    assert cfg['mean'] == pytest.approx([0.4914, 0.4822, 0.4465]) and cfg['std'] == pytest.approx([0.2023, 0.1994, 0.2010])
    assert model.mislas_config['stage'] == 2


def test_convert_checkpoint_returns_eval_model_with_equal_logits(cifar):
    model = convert_checkpoint(cifar['path'], 'resnet32_cifar', 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert not model.training
    torch.testing.assert_close(_logits(model, cifar['x']), cifar['expected'], atol=TOL, rtol=TOL)
    assert model.pretrained_cfg['label_names'] == [str(i) for i in range(10)]
    assert model.pretrained_cfg['mean'] == (0.5, 0.5, 0.5) and model.pretrained_cfg['std'] == (0.25, 0.25, 0.25)
    assert model.mislas_config['converted_from'] == 'ckpt.best.pth.tar'


def test_resnet50_stage1_torchvision_names(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    backbone = resnet50()
    backbone.fc = nn.Identity()  # the reference's feature extractor has no head
    classifier = RefClassifier(2048, 7)
    _randomize(backbone, classifier, seed=1)
    path = tmp_path / 'r50.pth.tar'
    torch.save(_reference_checkpoint(backbone, classifier, prefix=False), path)
    x = torch.randn(1, 3, 64, 64)
    expected = _logits(nn.Sequential(backbone, classifier), x)

    out = convert_to_hub_folder(path, tmp_path / 'hub', 'resnet50', 7)
    model = _load_folder(out)
    torch.testing.assert_close(_logits(model, x), expected, atol=TOL, rtol=TOL)
    config = json.loads((out / 'config.json').read_text())
    assert config['mislas']['stage'] == 1 and config['mislas']['source_ece'] == 3.125
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 224, 224] and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    assert cfg['mean'] == pytest.approx([0.485, 0.456, 0.406]) and cfg['std'] == pytest.approx([0.229, 0.224, 0.225])
    assert 'test_input_size' not in cfg


def test_places_extra_block_roundtrip(tmp_path):
    """A Places-LT stage-2 checkpoint (trunk -> extra Bottleneck -> pool -> fc -> LWS), shallow to stay fast."""
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(2)
    trunk = ResNet(Bottleneck, [1, 1, 1, 1])  # keeps its unused ImageNet fc, as the reference's trunk does
    block, classifier, lws = Bottleneck(2048, 512), RefClassifier(2048, 5), RefLWS(5)
    _randomize(trunk, block, classifier, lws, seed=2)
    path = tmp_path / 'places.pth.tar'
    torch.save(_reference_checkpoint(trunk, classifier, lws, block), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = trunk
        feat = t.layer4(t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))))
        expected = lws(classifier(F.adaptive_avg_pool2d(block(feat), 1).flatten(1)))

    out = convert_to_hub_folder(path, tmp_path / 'hub', 'resnet152_places', 5, model_kwargs={'layers': (1, 1, 1, 1)})
    model = _load_folder(out)
    assert sum(1 for _ in model.layer3) == 1  # rebuilt from the recorded model_args
    torch.testing.assert_close(_logits(model, x), expected, atol=TOL, rtol=TOL)
    assert model.mislas_config['stage'] == 2
    with pytest.raises(ValueError, match='has no state_dict_block.*pass --arch resnet152'):
        convert_checkpoint(_save(tmp_path / 'noblock.pth.tar', _reference_checkpoint(trunk, classifier, lws)),
                           'resnet152_places', 5, model_kwargs={'layers': (1, 1, 1, 1)})


def test_resnet152_places_state_dict_matches_torchvision_layout():
    """Full depth, on the meta device: torchvision ResNet-152 + Bottleneck(2048, 512) names and shapes."""
    import timm
    from torchvision.models import resnet152
    from torchvision.models.resnet import Bottleneck

    with torch.device('meta'):
        model = timm.create_model('resnet152_places', num_classes=365)
        trunk, block = resnet152(), Bottleneck(2048, 512)
    expected = {k: tuple(v.shape) for k, v in trunk.state_dict().items() if not k.startswith('fc.')}
    expected.update({f'extra_block.{k}': tuple(v.shape) for k, v in block.state_dict().items()})
    expected.update({'fc.weight': (365, 2048), 'fc.bias': (365,)})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.forward_features(torch.empty(1, 3, 64, 64, device='meta')).shape == (1, 2048, 2, 2)
    assert model.get_classifier() is model.fc


def test_numpy1_module_name_is_accepted(cifar, tmp_path):
    """Reference checkpoints pickled under numpy 1.x name ``numpy.core.multiarray.scalar``."""
    path = tmp_path / 'np1.pth.tar'
    with zipfile.ZipFile(cifar['path']) as src, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith('data.pkl'):
                data = data.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar')
            dst.writestr(info, data)
    with zipfile.ZipFile(path) as zf:
        assert any(b'numpy.core.multiarray\nscalar' in zf.read(n) for n in zf.namelist() if n.endswith('data.pkl'))
    checkpoint = load_reference_checkpoint(path)
    assert float(checkpoint['its_ece']) == 3.125


# ---------------------------------------------------------------- refusals

class SneakyDict(OrderedDict):
    pass


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize('payload', [argparse.Namespace(lr=0.1), SneakyDict(a=torch.zeros(1))], ids=['namespace', 'subclass'])
def test_refuses_other_pickled_objects(cifar, tmp_path, payload):
    checkpoint = torch.load(cifar['path'], weights_only=False)
    checkpoint['args'] = payload
    path = _save(tmp_path / 'unsafe.pth.tar', checkpoint)
    with pytest.raises(ValueError, match=UNSAFE_MESSAGE) as info:
        convert_to_hub_folder(path, tmp_path / 'hub', 'resnet32_cifar', 10)
    assert 'unsafe.pth.tar' in str(info.value) and 'will not be unpickled' in str(info.value)
    assert not (tmp_path / 'hub').exists()


def test_refuses_dict_without_state_dict_model(tmp_path):
    path = _save(tmp_path / 'plain.pth', {'state_dict': {'fc.weight': torch.zeros(2, 2)}})
    with pytest.raises(ValueError, match="no 'state_dict_model'.*not a MiSLAS reference checkpoint"):
        convert_to_hub_folder(path, tmp_path / 'hub', 'resnet32_cifar', 10)
    assert not (tmp_path / 'hub').exists()


def test_cli_refuses_num_classes_mismatch(cifar, tmp_path, capsys):
    out = tmp_path / 'hub'
    assert main([str(cifar['path']), str(out), '--arch', 'resnet32_cifar', '--num-classes', '100']) == 2
    assert 'has 10 classes but num_classes is 100; pass --num-classes 10' in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_wrong_arch(cifar, tmp_path):
    with pytest.raises(ValueError, match=r'does not match --arch resnet56_cifar: \d+ missing keys'):
        convert_to_hub_folder(cifar['path'], tmp_path / 'hub', 'resnet56_cifar', 10)
    with pytest.raises(ValueError, match='unknown --arch'):
        convert_checkpoint(cifar['path'], 'no_such_net', 10)
    assert not (tmp_path / 'hub').exists()


def test_refuses_places_block_without_places_arch(cifar, tmp_path):
    checkpoint = torch.load(cifar['path'], weights_only=False)
    checkpoint['state_dict_block'] = {'conv1.weight': torch.zeros(1)}
    path = _save(tmp_path / 'block.pth.tar', checkpoint)
    with pytest.raises(ValueError, match='pass --arch resnet152_places'):
        convert_checkpoint(path, 'resnet32_cifar', 10)


def test_refuses_existing_output_unless_overwrite(cifar, tmp_path):
    out = tmp_path / 'hub'
    out.mkdir()
    (out / 'keep.txt').write_text('x')
    with pytest.raises(ValueError, match='already exists; pass --overwrite'):
        convert_to_hub_folder(cifar['path'], out, 'resnet32_cifar', 10)
    assert (out / 'keep.txt').exists()
    convert_to_hub_folder(cifar['path'], out, 'resnet32_cifar', 10, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    assert [p.name for p in tmp_path.iterdir()] == ['hub']  # no temporary leftovers


def test_refuses_wrong_label_count_and_garbage_file(cifar, tmp_path):
    with pytest.raises(ValueError, match='3 label names given for 10 classes'):
        convert_checkpoint(cifar['path'], 'resnet32_cifar', 10, label_names=['a', 'b', 'c'])
    garbage = tmp_path / 'garbage.pth.tar'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        load_reference_checkpoint(garbage)
