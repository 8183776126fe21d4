"""The shipped model zoo: every folder complete, config / card / metrics.json in agreement, loadable.

Re-evaluating the models on the full CIFAR-10 test split needs data the tests may not assume; it is
`python -m mislas_timm.zoo --verify PATH` (its output is in BENCHMARKS.md). The evaluator's exact
agreement with train.py's report is tested on tiny data in test_training.py.
"""
import json

import pytest
import torch

import mislas_timm
from mislas_timm import zoo
from mislas_timm.hub import HUB_FILES, check_card_matches_metrics, prepare_upload
from mislas_timm.hub.card import card_front_matter

from .hub_fixtures import CIFAR10_LT_COUNTS, CIFAR10_NAMES

ENTRIES = zoo.ZOO


def test_zoo_lists_the_three_models():
    assert [e.name for e in ENTRIES] == ['resnet32_cifar.cifar10_lt_if100_ce', 'resnet32_cifar.cifar10_lt_if100_mixup',
                                         'resnet32_cifar.cifar10_lt_if100_mislas']
    assert all(e.hub_id == f'mislas-timm/{e.name}' for e in ENTRIES)
    rows = zoo.table()
    assert all(r['top1'] is not None and r['ece'] is not None for r in rows)


@pytest.mark.parametrize('entry', ENTRIES, ids=lambda e: e.name)
def test_shipped_folder_agrees_with_itself(entry):
    folder = entry.folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)
    prepare_upload(folder)  # complete, readable weights, card == metrics.json
    config = json.loads((folder / 'config.json').read_text())
    metrics = json.loads((folder / 'metrics.json').read_text())
    card = (folder / 'README.md').read_text()
    check_card_matches_metrics(card, metrics)
    assert config['architecture'] == 'resnet32_cifar' and config['label_names'] == CIFAR10_NAMES
    assert config['mislas']['class_counts'] == CIFAR10_LT_COUNTS == metrics['class_counts']
    assert config['mislas']['imb_factor'] == 100 and config['mislas']['data_seed'] == 0
    assert config['mislas']['preset'] == 'cifar10-lt-if100-cpu'
    assert metrics['num_samples'] == 10_000 and metrics['split'] == 'test'
    front = card_front_matter(card)
    assert front['model-index'][0]['name'] == entry.hub_id.split('/')[1]
    assert front['datasets'] == ['uoft-cs/cifar10']
    for key in ('many_top1', 'medium_top1', 'head_top1', 'med_top1', 'tail_top1'):
        assert f'{100 * metrics[key]:.2f}' in card
    assert metrics['few_top1'] is None  # CIFAR-10-LT IF100 has no class with < 20 images
    assert entry.hub_id in card and 'import mislas_timm' in card
    assert (folder / 'model.safetensors').stat().st_size < 3_000_000


@pytest.mark.parametrize('entry', ENTRIES, ids=lambda e: e.name)
def test_zoo_models_load_through_every_path(entry):
    from mislas_timm.demo import example_images, open_image
    import timm
    model = mislas_timm.load_model(entry.name)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(cfg['input_size']) == (3, 32, 32) and cfg['crop_pct'] == 1.0
    transform = timm.data.create_transform(**cfg)
    x = torch.stack([transform(open_image(p)) for p in example_images()])
    plain = timm.create_model(f'local-dir:{entry.folder}', pretrained=True).eval()
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, plain(x))
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(len(x)))
