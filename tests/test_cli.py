import subprocess
import sys
from pathlib import Path

import pytest
import timm

import mislas_timm  # noqa: F401
from mislas_timm.config import ConfigError
from mislas_timm.training import _freeze_except

ROOT = Path(__file__).resolve().parents[1]

FLAGS = ['--preset', '--config', '--dataset', '--output-dir', '--stage', '--epochs', '--stage2-epochs', '--init',
         '--resume', '--seed', '--data-seed', '--model', '--image-column', '--label-column', '--data-root',
         '--train-list', '--test-list', '--max-train-samples', '--max-eval-samples', '--mixed-precision', '--set']


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--help'], capture_output=True, text=True,
                         cwd=ROOT, timeout=120).stdout
    for flag in FLAGS:
        assert flag in out, flag
    assert 'cifar10-lt-if100-cpu' in out


def test_build_config_flags_and_set():
    sys.path.insert(0, str(ROOT))
    import train
    args = train.parse_args(['--preset', 'cifar10-lt-if100', '--output-dir', 'x', '--epochs', '3', '--data-seed', '7',
                             '--model', 'resnet56_cifar', '--set', 'stage1.epochs=4'])
    cfg = train.build_config(args)
    assert cfg.stage1.epochs == 4  # --set wins over --epochs
    assert cfg.longtail.data_seed == 7 and cfg.model.arch == 'resnet56_cifar' and cfg.seed == 0
    args = train.parse_args(['--preset', 'imagenet-lt-r50', '--output-dir', 'x', '--data-seed', '1'])
    with pytest.raises(ConfigError, match='--data-seed'):
        train.build_config(args)


def test_partial_freeze_for_places_style_stage1():
    model = timm.create_model('resnet20_cifar', num_classes=4)
    _freeze_except(model, ['layer3.2.', 'fc.'])
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'layer3', 'fc'}
    assert not model.layer3[1].conv1.weight.requires_grad and model.layer3[2].conv1.weight.requires_grad
    with pytest.raises(ConfigError, match='matches no parameter'):
        _freeze_except(model, ['nothing.'])


def test_places_architecture_is_registered():
    model = timm.create_model('resnet152_places', num_classes=365, pretrained=False)
    assert model.get_classifier().out_features == 365 and hasattr(model, 'extra_block')


def test_package_entry_point_is_train_py():
    """python -m mislas_timm.train is train.py (a wheel install and accelerate launch -m have it)."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS='1')
    script = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--help'], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env=env)
    module = subprocess.run([sys.executable, '-m', 'mislas_timm.train', '--help'], capture_output=True, text=True,
                            cwd=ROOT.parent, timeout=120, env=dict(env, PYTHONPATH=str(ROOT)))
    assert script.returncode == module.returncode == 0, module.stderr
    assert module.stdout == script.stdout and '--init' in module.stdout and 'finetune' in module.stdout


def test_init_flag_sets_model_init_and_takes_the_architecture_from_the_source():
    sys.path.insert(0, str(ROOT))
    import train
    cfg = train.build_config(train.parse_args(['--preset', 'finetune', '--output-dir', 'x', '--init', 'some/run']))
    assert cfg.model.init == 'some/run' and cfg.model.arch is None and cfg.longtail is None
    assert cfg.dataset.num_classes is None and cfg.data.input_size is None  # filled in from the source
    cfg = train.build_config(train.parse_args(['--preset', 'cifar10-lt-if100', '--output-dir', 'x', '--init', 'a/b',
                                               '--model', 'resnet56_cifar']))
    assert cfg.model.init == 'a/b' and cfg.model.arch == 'resnet56_cifar'  # --model: that model, from the shared tensors
    cfg = train.build_config(train.parse_args(['--preset', 'finetune', '--output-dir', 'x', '--model', 'resnet20_cifar']))
    assert cfg.model.init is None and cfg.model.arch == 'resnet20_cifar'  # the same recipe from scratch


def test_places_preset_trunk_weights_do_not_become_stage2s_model():
    from mislas_timm.train import build_config, parse_args

    stage2 = build_config(parse_args(['--preset', 'places-lt-r152', '--stage', '2', '--output-dir', 'x']))
    assert stage2.model.init is None and stage2.model.trunk_weights is None
    explicit = build_config(parse_args(['--preset', 'places-lt-r152', '--stage', '2', '--init', 'runs/p/stage1',
                                        '--output-dir', 'x']))
    assert explicit.model.init == 'runs/p/stage1'
    stage1 = build_config(parse_args(['--preset', 'places-lt-r152', '--output-dir', 'x']))
    assert stage1.model.init == 'resnet152.tv_in1k'
