"""--init / model.init: the model a run starts from (mislas_timm.initialization), on the shipped zoo weights
and hand-built Hub folders and caches (no network)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import mislas_timm  # noqa: F401
from mislas_timm.config import ConfigError, apply_overrides, load_preset, parse_config
from mislas_timm.initialization import resolve_start
from mislas_timm.sources import shipped_folder
from mislas_timm.training import build_model

from .test_training import one_line_error

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
TAG = 'resnet32_cifar.cifar10_lt_if100_mislas'
CIFAR10 = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def zoo_weights(tag: str = TAG):
    return load_file(shipped_folder(tag) / 'model.safetensors')


def finetune_config(*overrides: str):
    return parse_config(apply_overrides(load_preset('finetune'), list(overrides)))


class Lines(logging.Handler):
    """The lines mislas_timm.train logs while the handler is attached."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger = logging.getLogger('mislas_timm.train')
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def test_resolve_start_takes_architecture_preprocessing_and_sha256_from_the_source(tmp_path):
    cfg, start, notes = resolve_start(finetune_config(f'model.init={TAG}'), '1', tmp_path)
    weights = shipped_folder(TAG) / 'model.safetensors'
    assert cfg.model.arch == 'resnet32_cifar' and start.arch == 'resnet32_cifar'
    assert cfg.model.init_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() == start.sha256
    source_cfg = json.loads((shipped_folder(TAG) / 'config.json').read_text())['pretrained_cfg']
    assert cfg.data.input_size == list(source_cfg['input_size']) == [3, 32, 32]
    assert cfg.data.mean == pytest.approx(source_cfg['mean']) and cfg.data.std == pytest.approx(source_cfg['std'])
    assert cfg.data.crop_pct == source_cfg['crop_pct'] and cfg.data.train_transform == 'cifar'
    assert any('from the source' in n for n in notes) and any('train_transform auto: cifar' in n for n in notes)
    assert not tmp_path.joinpath('stage1').exists()
    # From scratch (--model ARCH): the architecture's own default cfg, nothing recorded as init.
    scratch, none, _ = resolve_start(finetune_config('model.arch=resnet20_cifar'), '1', tmp_path)
    assert none is None and scratch.model.init is None and scratch.model.init_sha256 is None
    assert scratch.data.input_size == [3, 32, 32] and scratch.data.train_transform == 'cifar'


def test_classifier_reinitialised_when_classes_differ_kept_when_they_match(tmp_path):
    cfg, _, _ = resolve_start(finetune_config(f'model.init={TAG}'), '1', tmp_path)
    zoo = zoo_weights()
    names = ['alpha', 'bravo', 'charlie', 'delta', 'echo']
    with Lines() as lines:
        torch.manual_seed(0)
        model = build_model(cfg, 5, names)
    state = model.state_dict()
    assert state['fc.weight'].shape == (5, 64)
    trunk = [k for k in zoo if not k.startswith('fc.')]
    assert trunk and all(torch.equal(state[k], zoo[k]) for k in trunk)
    [line] = [ln for ln in lines if 're-initialised' in ln]
    assert line == ('--init: classifier fc re-initialised (the source has 10 classes, the data 5): '
                    'fc.weight [10, 64] -> [5, 64], fc.bias [10] -> [5]')
    assert model.pretrained_cfg['label_names'] == names and model.pretrained_cfg['num_classes'] == 5
    # Ten classes with other names: re-initialised too (as timm does for another label set) ...
    with Lines() as lines:
        other = build_model(cfg, 10, [f'c{i}' for i in range(10)])
    assert not torch.equal(other.state_dict()['fc.weight'], zoo['fc.weight'])
    assert any("the source's classes (airplane, automobile, bird, cat, deer, ...) are not the data's (c0, c1" in ln
               for ln in lines), lines
    # ... unless model.keep_classifier=true; CIFAR-10's own classes keep it without being asked.
    kept = build_model(parse_config(apply_overrides(cfg.to_dict(), ['model.keep_classifier=true'])), 10,
                       [f'c{i}' for i in range(10)])
    assert torch.equal(kept.state_dict()['fc.weight'], zoo['fc.weight'])
    with Lines() as lines:
        same = build_model(cfg, 10, CIFAR10)
    assert torch.equal(same.state_dict()['fc.weight'], zoo['fc.weight'])
    assert any('classifier fc kept' in ln and 'the same 10 classes' in ln for ln in lines), lines
    # keep_classifier=true with another class count cannot be honoured: one line.
    with pytest.raises(ConfigError, match='keep_classifier=true, but .* has 10 classes and the data 5'):
        build_model(parse_config(apply_overrides(cfg.to_dict(), ['model.keep_classifier=true'])), 5, names)


def test_trunk_weights_is_a_deprecated_alias_loading_the_shared_tensors(tmp_path):
    """Places-LT's way: the model keeps its own architecture (here resnet20_cifar) and takes the tensors
    it shares with the source (resnet32_cifar), under the old key."""
    raw = apply_overrides(load_preset('cifar10-lt-if100'), ['model.arch=resnet20_cifar', f'model.trunk_weights={TAG}'])
    cfg, start, notes = resolve_start(parse_config(raw), '1', tmp_path)
    assert cfg.model.init == TAG and cfg.model.arch == 'resnet20_cifar' and len(cfg.model.init_sha256) == 64
    assert any('model.trunk_weights is deprecated' in n for n in notes)
    assert any('resnet20_cifar starts from the' in n and f'shares with {TAG}' in n for n in notes), notes
    model = build_model(cfg, 10, CIFAR10)
    zoo, own = zoo_weights(), model.state_dict()
    assert torch.equal(own['layer3.2.conv2.weight'], zoo['layer3.2.conv2.weight'])
    assert torch.equal(own['conv1.weight'], zoo['conv1.weight'])
    assert model.pretrained_cfg['architecture'] == 'resnet20_cifar'  # its own preprocessing cfg, not the source's
    # The two keys naming different sources is a contradiction, not a choice.
    with pytest.raises(ConfigError, match='model.init .* and model.trunk_weights .* disagree'):
        parse_config(apply_overrides(raw, ['model.init=resnet32_cifar.cifar10_lt_if50_mislas']))


def test_bad_sources_are_refused_before_any_data(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_start(finetune_config('model.init=no/such/model'), '1', tmp_path)
    assert str(err.value).startswith("--init: unknown model source 'no/such/model'") and '\n' not in str(err.value)
    with pytest.raises(ConfigError, match='shares no tensor outside its classifier with the model test_vit'):
        resolve_start(finetune_config(f'model.init={TAG}', 'model.arch=test_vit'), '1', tmp_path)
    with pytest.raises(ConfigError, match='model.init_sha256 is abab'):
        resolve_start(finetune_config(f'model.init={TAG}', f'model.init_sha256={"ab" * 32}'), '1', tmp_path)
    with pytest.raises(ConfigError, match='has no architecture of its own: pass --init SOURCE .* or --model ARCH'):
        resolve_start(finetune_config(), '1', tmp_path)
    with pytest.raises(ConfigError, match='keep_classifier=true, but .* has 10 classes and the data 5'):
        resolve_start(finetune_config(f'model.init={TAG}', 'model.keep_classifier=true', 'dataset.num_classes=5'),
                      '1', tmp_path)


def run_cli(*args, env=ENV, module=False):
    entry = ['-m', 'mislas_timm.train'] if module else [str(ROOT / 'train.py')]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.mark.slow  # three starts of train.py
def test_unknown_source_is_one_line_before_the_data_and_writes_nothing(tmp_path):
    """The data set does not exist either: the source is checked first, and nothing is written."""
    out = tmp_path / 'out'
    one_line_error(run_cli('--preset', 'finetune', '--init', 'resnet32_cifar.no_such_tag', '--dataset', tmp_path / 'nowhere',
                     '--output-dir', out), '--init', "'resnet32_cifar.no_such_tag'")
    one_line_error(run_cli('--preset', 'finetune', '--init', 'hf-hub:nobody/nothing', '--dataset', tmp_path / 'nowhere',
                     '--output-dir', out, env=dict(ENV, HF_HUB_CACHE=str(tmp_path / 'empty-cache'))),
             '--init', 'hf-hub:nobody/nothing')
    one_line_error(run_cli('--preset', 'finetune', '--dataset', tmp_path / 'nowhere', '--output-dir', out, module=True),
             'no architecture of its own', '--init SOURCE', '--model ARCH')
    assert not out.exists()


@pytest.mark.slow
def test_init_from_hf_hub_through_an_offline_cache(tmp_path, tiny_dataset_dir):
    """hf-hub:ORG/NAME through huggingface_hub's real cache layout; config.json records the source and the
    sha256 of the weights file it loaded; stage 1 starts from those weights (one epoch at lr ~0)."""
    from .hub_fixtures import build_offline_cache
    cache = tmp_path / 'hf-cache'
    snapshot = build_offline_cache(cache, 'acme/cifar-resnet32', shipped_folder(TAG))
    out = tmp_path / 'run'
    result = run_cli('--preset', 'finetune', '--init', 'hf-hub:acme/cifar-resnet32', '--dataset', tiny_dataset_dir,
                     '--output-dir', out, '--stage', '1', '--epochs', '1', '--mixed-precision', 'no',
                     '--set', 'stage1.lr=1e-12', '--set', 'stage1.mixup_alpha=0', '--set', 'stage1.batch_size=32',
                     '--set', 'data.input_size=[3, 16, 16]', '--set', 'dataset.val_per_class=2',
                     '--max-eval-samples', '8',
                     env=dict(ENV, HF_HUB_CACHE=str(cache)))
    assert result.returncode == 0, result.stderr[-3000:]
    mislas = json.loads((out / 'stage1' / 'config.json').read_text())['mislas']
    assert mislas['init'] == 'hf-hub:acme/cifar-resnet32'
    assert mislas['init_sha256'] == hashlib.sha256((snapshot / 'model.safetensors').read_bytes()).hexdigest()
    trained, zoo = load_file(out / 'stage1' / 'model.safetensors'), zoo_weights()
    assert torch.allclose(trained['layer2.1.conv1.weight'], zoo['layer2.1.conv1.weight'], atol=1e-6)
    assert trained['fc.weight'].shape == (4, 64)  # the tiny set's 4 colours, not CIFAR-10's 10 classes
    log = (out / 'train.log').read_text()
    assert 'classifier fc re-initialised (the source has 10 classes, the data 4)' in log


TIMM_NAME_SCRIPT = '''
import json, sys
from pathlib import Path
import torch
from mislas_timm.config import apply_overrides, load_preset, parse_config
from mislas_timm.initialization import resolve_start
from mislas_timm.training import build_model
cfg = parse_config(apply_overrides(load_preset("finetune"), ["model.init=" + sys.argv[1]]))
cfg, start, notes = resolve_start(cfg, "1", Path(sys.argv[2]))
model = build_model(cfg, 3, ["a", "b", "c"])
print(json.dumps({"arch": cfg.model.arch, "sha256": cfg.model.init_sha256, "input_size": cfg.data.input_size,
                  "mean": cfg.data.mean, "crop_pct": cfg.data.crop_pct, "transform": cfg.data.train_transform,
                  "classes": model.get_classifier().out_features,
                  "interpolation": model.pretrained_cfg["interpolation"]}))
'''


@pytest.mark.slow
def test_init_from_a_timm_pretrained_name_through_an_offline_cache(tmp_path):
    """A timm pretrained name (timm's own hf_hub_id, here a hand-built cache of a tiny timm test model): the
    architecture, input size, mean, std, crop_pct and interpolation are the source's; an input above 64 px
    trains with the ImageNet-style augmentation."""
    from timm.models import save_for_hf
    from .hub_fixtures import build_offline_cache
    name = 'test_resnet.r160_in1k'
    folder = tmp_path / 'folder'
    save_for_hf(timm.create_model(name, pretrained=False), folder, safe_serialization=True)
    snapshot = build_offline_cache(tmp_path / 'cache', f'timm/{name}', folder)
    result = subprocess.run([sys.executable, '-c', TIMM_NAME_SCRIPT, name, str(tmp_path / 'out')], capture_output=True,
                            text=True, env=dict(ENV, HF_HUB_CACHE=str(tmp_path / 'cache')), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    timm_cfg = timm.models.get_pretrained_cfg(name)
    assert got['arch'] == 'test_resnet' and got['input_size'] == list(timm_cfg.input_size) == [3, 160, 160]
    assert got['mean'] == pytest.approx(timm_cfg.mean) and got['crop_pct'] == pytest.approx(timm_cfg.crop_pct)
    assert got['transform'] == 'imagenet' and got['interpolation'] == timm_cfg.interpolation
    assert got['sha256'] == hashlib.sha256((snapshot / 'model.safetensors').read_bytes()).hexdigest()
    assert got['classes'] == 3


def test_preprocessing_comes_from_the_source_only_for_its_own_architecture(tmp_path):
    """data.mean / std / input_size left null: a source of the model's architecture brings its own (the
    weights were trained on that preprocessing); a source of another architecture lends its shared tensors
    only, and the model built keeps the default cfg of its architecture."""
    from mislas_timm.hub import save_hub_folder

    model = mislas_timm.load_model(TAG)
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.5, 0.25, 0.125), std=(0.2, 0.2, 0.2))
    source = save_hub_folder(model, tmp_path / 'grey-normalised', label_names=list(model.pretrained_cfg['label_names']))
    own = resolve_start(finetune_config(f'model.init={source}'), '1', tmp_path / 'a')[0]
    assert list(own.data.mean) == [0.5, 0.25, 0.125] and list(own.data.std) == [0.2, 0.2, 0.2]
    other, _, notes = resolve_start(finetune_config(f'model.init={source}', 'model.arch=resnet20_cifar'), '1',
                                    tmp_path / 'b')
    default = timm.create_model('resnet20_cifar').pretrained_cfg
    assert list(other.data.mean) == list(default['mean']) != [0.5, 0.25, 0.125]
    assert list(other.data.input_size) == list(default['input_size'])
    assert any('from the default cfg of resnet20_cifar' in n for n in notes), notes
