"""The first command a newcomer runs: a 1 + 1-epoch CPU-preset run, on tiny CIFAR-like data made here.

It used to end stage 1 at chance with a test NLL of ~10 x log K (eval-mode BN statistics after six
momentum-0.1 updates are still mostly their initial values) and to stop stage 2 as "diverged" at its
second step. Short stages now end with a precise-BN pass (mislas_timm.precise_bn).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def cifar_like(num_per_class, seed):
    """A ``datasets.Dataset`` in the uoft-cs/cifar10 schema (img, label): 32x32 images, class c a noisy
    hue c/10 with a stripe whose direction depends on c, so the classes are learnable but not in one step."""
    import colorsys

    import datasets
    from PIL import Image

    rng = np.random.RandomState(seed)
    images, labels = [], []
    for c in range(len(CLASSES)):
        colour = np.array(colorsys.hsv_to_rgb(c / len(CLASSES), 0.8, 0.9)) * 255
        stripe = (np.indices((32, 32))[c % 2] // 4 % 2)[..., None] * 40.0
        for _ in range(num_per_class):
            pixels = colour + stripe + rng.normal(0, 10, (32, 32, 3))
            images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), 'RGB'))
            labels.append(c)
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({'img': images, 'label': labels}, features=features)


@pytest.fixture(scope='module')
def cifar_like_dir(tmp_path_factory) -> Path:
    """save_to_disk folder: 100 training images per class (the preset's IF100 view keeps 250 of them, 20 of
    which are held out for validation: 2 steps of 128), 10 test images per class."""
    import datasets

    folder = tmp_path_factory.mktemp('smoke') / 'cifar-like'
    datasets.DatasetDict({'train': cifar_like(100, 0), 'test': cifar_like(10, 1)}).save_to_disk(str(folder))
    return folder


def smoke(dataset, out, *extra):
    """The newcomer's command on ``dataset`` (runtime choices as `auto` resolves them on this machine)."""
    return subprocess.run([sys.executable, str(ROOT / 'train.py'), '--preset', 'cifar10-lt-if100-cpu', '--epochs', '1',
                           '--stage2-epochs', '1', '--dataset', str(dataset), '--output-dir', str(out), *extra],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_one_plus_one_epoch_cpu_preset_run_succeeds(cifar_like_dir, tmp_path):
    out = tmp_path / 'smoke'
    result = smoke(cifar_like_dir, out)
    assert result.returncode == 0, result.stderr[-3000:]
    stage1 = json.loads((out / 'stage1' / 'metrics.json').read_text())
    assert stage1['num_samples'] == 100
    assert stage1['nll'] < 2 * math.log(10), stage1['nll']  # ~10 x log K without the precise-BN pass
    stage2 = json.loads((out / 'stage2' / 'metrics.json').read_text())
    assert stage2['nll'] < 2 * math.log(10), stage2['nll']
    # The pass is scoped to short stages, and the run records that it ran and below which stage length.
    recipe = json.loads((out / 'stage1' / 'config.json').read_text())['mislas']['recipe']
    assert recipe['precise_bn_below_steps'] == 200 and recipe['precise_bn_batches'] == 2
    log = (out / 'train.log').read_text()
    assert 'stage1: 2 steps, under precise_bn_below_steps 200: BN running statistics re-estimated on 2' in log
    assert 'diverged' not in log
    # Stage 2 of this preset has no shift-BN: its frozen backbone keeps the stage-1 statistics.
    assert json.loads((out / 'stage2' / 'config.json').read_text())['mislas']['recipe']['precise_bn_batches'] == 0


@pytest.mark.slow
def test_a_bad_stage1_model_is_reported_as_such_not_as_a_stage2_divergence(cifar_like_dir, tmp_path):
    """Without the pass (precise_bn_below_steps 0: what every stage of 200 steps or more does) the 2-step
    stage 1 is as broken as before; stage 2 names it before any step instead of "diverging" at its second."""
    from safetensors.torch import load_file

    out = tmp_path / 'no-pass'
    result = smoke(cifar_like_dir, out, '--set', 'stage1.precise_bn_below_steps=0')
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip()
    assert 'Traceback' not in err and err.count('\n') == 0, err
    assert err.startswith('train.py: error: stage2: starts at loss ') and 'x log 10' in err, err
    assert 'the stage-1 model it starts from is bad (1 epoch of stage 1, test NLL' in err and 'diverged' not in err
    stage1 = json.loads((out / 'stage1' / 'metrics.json').read_text())
    assert stage1['nll'] > 5 * math.log(10)  # the failure, reproduced: eval-mode BN after 2 updates
    assert not (out / 'stage2').exists() and not (out / 'checkpoints' / 'stage2').exists()
    # With the pass off, the stage writes exactly the state it trained (its last checkpoint), bit for bit.
    written = load_file(out / 'stage1' / 'model.safetensors')
    trained = load_file(out / 'checkpoints' / 'stage1' / 'model.safetensors')
    assert written.keys() == trained.keys() and all(written[k].equal(trained[k]) for k in written)
    assert json.loads((out / 'stage1' / 'config.json').read_text())['mislas']['recipe']['precise_bn_batches'] == 0
