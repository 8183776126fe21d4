"""The shipped model zoo: every folder complete, config / card / metrics.json in agreement, loadable.

Re-evaluating the models on the full CIFAR-10 test split needs data the tests may not assume; it is
`python -m mislas_timm.zoo --verify PATH` (its output is in BENCHMARKS.md). The evaluator's exact
agreement with train.py's report is tested on tiny data in test_training.py.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mislas_timm
from mislas_timm import zoo
from mislas_timm.hub import HUB_FILES, check_card_matches_metrics, prepare_upload
from mislas_timm.hub.card import card_front_matter
from mislas_timm.sources import SourceError

from .hub_fixtures import CIFAR10_NAMES, LOAD_EVERY_TAG, build_offline_cache, no_network_env

ROOT = Path(__file__).resolve().parents[1]

ENTRIES = zoo.shipped()


def test_zoo_ships_the_demo_models():
    shipped = [e.name for e in ENTRIES]
    # The demo compares these two; more folders join as their runs finish.
    assert {'resnet32_cifar.cifar10_lt_if100_mislas', 'resnet32_cifar.cifar10_lt_if100_ce'} <= set(shipped)
    assert all(e.hub_id == f'mislas-timm/{e.name}' for e in zoo.ZOO)
    rows = zoo.table()
    assert [r['name'] for r in rows] == shipped
    assert all(r['top1'] is not None and r['ece'] is not None for r in rows)
    assert zoo.PAPER['resnet32_cifar.cifar10_lt_if100_mislas'] == (82.1, 3.70)


def test_zoo_names_are_timm_pretrained_tags():
    import timm
    listed = set(timm.list_pretrained('*cifar*'))
    for entry in zoo.ZOO:
        assert entry.name in listed, entry.name
        cfg = timm.models.get_pretrained_cfg(entry.name).to_dict()
        assert cfg['hf_hub_id'] == entry.hub_id and cfg['label_names'] == CIFAR10_NAMES
        assert cfg['crop_pct'] == 1.0 and tuple(cfg['mean']) == (0.4914, 0.4822, 0.4465)
        assert tuple(cfg['std']) == (0.2023, 0.1994, 0.2010) and tuple(cfg['input_size']) == (3, 32, 32)
        # a shipped tag's weights are its folder's file, which timm loads before hf_hub_id
        shipped = entry in ENTRIES
        assert cfg.get('file') == (str(entry.folder / 'model.safetensors') if shipped else None), entry.name
        assert shipped == (entry.folder == ROOT / 'model_cards' / entry.name)  # a checkout reads model_cards/
    # The bare name's default (timm: the first tag with weights) is the IF100 MiSLAS model.
    assert timm.create_model('resnet32_cifar').pretrained_cfg['tag'] == 'cifar10_lt_if100_mislas'
    assert timm.create_model('resnet20_cifar').pretrained_cfg['tag'] == 'untrained'


@pytest.mark.parametrize('offline', [False, True], ids=['HF_HUB_OFFLINE-unset', 'HF_HUB_OFFLINE=1'])
def test_shipped_tags_load_without_the_network(offline, tmp_path):
    """timm.create_model(TAG, pretrained=True) and load_model(TAG) read the shipped folder, from any cwd,
    with an empty Hugging Face cache and the Hub at a closed port: no request, no wait."""
    references = {e.name: str(e.folder) for e in ENTRIES}
    env = no_network_env(tmp_path, offline, pythonpath=str(ROOT))
    result = subprocess.run([sys.executable, '-c', LOAD_EVERY_TAG, json.dumps(references)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['attempts'] == [] and report['seconds'] < 20, report
    assert report['files'] == {name: str(Path(folder) / 'model.safetensors') for name, folder in references.items()}
    assert not (tmp_path / 'empty-hub-cache').exists() or not any((tmp_path / 'empty-hub-cache').iterdir())


def test_tags_not_shipped_come_from_the_hub(tmp_path):
    """With no shipped copy (MISLAS_ZOO_DIR: an empty folder) a tag loads through huggingface_hub (an
    offline cache here); a tag neither shipped nor cached fails in one line naming where it looked."""
    cached = zoo.get('resnet32_cifar.cifar10_lt_if100_mislas')
    missing = zoo.get('resnet32_cifar.cifar10_lt_if100_ce')
    cache = tmp_path / 'hub'
    build_offline_cache(cache, cached.hub_id, cached.folder)
    empty = tmp_path / 'no-zoo'
    empty.mkdir()
    code = textwrap.dedent(f'''
        import torch, timm, mislas_timm
        from mislas_timm import zoo
        from mislas_timm.sources import resolve_source
        assert zoo.shipped() == [] and resolve_source("{cached.name}") == "hf-hub:{cached.hub_id}"
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        ref = timm.create_model("local-dir:{cached.folder}", pretrained=True).eval()
        tagged = timm.create_model("{cached.name}", pretrained=True).eval()
        bare = timm.create_model("resnet32_cifar", pretrained=True).eval()
        assert "file" not in tagged.pretrained_cfg
        assert torch.equal(tagged(x), ref(x)) and torch.equal(bare(x), ref(x))
        assert torch.equal(mislas_timm.load_model("{cached.name}")(x), ref(x))
        try:
            mislas_timm.load_model("{missing.name}")
        except ValueError as err:
            print(err)
    ''')
    env = no_network_env(tmp_path, offline=True, pythonpath=str(ROOT), HF_HUB_CACHE=str(cache),
                         MISLAS_ZOO_DIR=str(empty))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = result.stdout.strip().splitlines()
    assert line.startswith(f'{missing.name}: no shipped copy (looked in {empty}) and hf-hub:{missing.hub_id} '
                           'cannot be fetched (LocalEntryNotFoundError'), line


def test_unknown_tag_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = 'resnet32_cifar.cifar10_lt_if7_mislas'
    with pytest.raises(SourceError) as err:
        mislas_timm.load_model(name)
    message = str(err.value)
    assert '\n' not in message and message.startswith(f"unknown model source '{name}'")
    assert zoo.ZOO[0].name in message and str(tmp_path / name) in message  # the zoo tags and the folder it looked for


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
    counts = config['mislas']['class_counts']
    imb_factor = config['mislas']['imb_factor']
    assert imb_factor in (100, 50, 10) and entry.tag.startswith(f'cifar10_lt_if{imb_factor}_')
    kept = mislas_timm.longtail_counts(5000, 10, imb_factor)
    assert counts == metrics['class_counts'] and counts[1:] == kept[1:]
    if config['mislas'].get('val_sha256'):  # the head class gave its 20 validation images out of its 5,000
        assert counts[0] + config['mislas']['val_counts'][0] == kept[0] == 5000
    else:
        assert counts[0] == kept[0]
    assert zoo.stage1_epochs(config['mislas']) in (30, 200)
    assert config['mislas']['data_seed'] == 0
    assert config['mislas']['preset'] in ('cifar10-lt-if100-cpu', 'cifar10-lt-if100', 'cifar10-lt-if50', 'cifar10-lt-if10')
    assert metrics['num_samples'] == 10_000 and metrics['split'] == 'test'
    front = card_front_matter(card)
    assert front['model-index'][0]['name'] == entry.hub_id.split('/')[1]
    assert front['datasets'] == ['uoft-cs/cifar10']
    for key in ('many_top1', 'head_top1', 'med_top1', 'tail_top1'):
        assert f'{100 * metrics[key]:.2f}' in card
    assert metrics['few_top1'] is None  # CIFAR-10-LT (IF <= 100) has no class with < 20 images
    if min(counts) > 100:  # IF10: every class is a many-shot one (> 100 images), so medium is empty too
        assert metrics['medium_top1'] is None and card.count('n/a (no class in group)') == 2
    else:
        assert f'{100 * metrics["medium_top1"]:.2f}' in card and card.count('n/a (no class in group)') == 1
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


def test_card_limitations_state_the_gap_and_what_the_data_was():
    meta = {'seed': 0, 'data_seed': 0, 'class_counts': [4980, 50], 'val_per_class': 20, 'stage': 1,
            'recipe': {'epochs': 200}, 'image_encoding': 'JPEG quality 75, 4:2:0 chroma subsampling'}
    lines = zoo.card_limitations('resnet32_cifar.cifar10_lt_if100_ce', meta, 0.652)
    gap = next(line for line in lines if line.startswith('Top-1 is'))
    assert gap.startswith("Top-1 is 5.2 points below the paper's 70.4%.") and 'lossy re-export' in gap
    assert any('head class trains on 4,980 images' in line for line in lines)
    assert not any('CPU budget' in line for line in lines)
    # The original pixels: the gap note no longer blames the data; a 30-epoch run says it was a budget run.
    png = dict(meta, image_encoding='PNG (lossless)', recipe={'epochs': 30})
    png.pop('val_per_class')
    lines = zoo.card_limitations('resnet32_cifar.cifar10_lt_if100_ce', png, 0.6)
    gap = next(line for line in lines if line.startswith('Top-1 is'))
    assert 'lossy' not in gap and 'best test epoch' in gap
    assert any('a 30-epoch stage 1' in line for line in lines) and any('cannot be fitted' in line for line in lines)
    # At or above the paper: no gap line.
    assert not any(line.startswith('Top-1 is') for line in zoo.card_limitations('resnet32_cifar.cifar10_lt_if100_ce', meta, 0.71))


def test_data_note_says_whether_the_pixels_were_the_original_ones():
    assert 'original pixels' in zoo.data_note('PNG (lossless)')
    lossy = zoo.data_note('JPEG quality 75, 4:2:0 chroma subsampling')
    assert 'lossy re-export of it (JPEG quality 75, 4:2:0 chroma subsampling)' in lossy and 'original' not in lossy
    assert 'not recorded' in zoo.data_note(None)


@pytest.mark.parametrize('entry', ENTRIES, ids=lambda e: e.name)
def test_shipped_card_states_the_standard_limitations(entry):
    """A card built before a change to card_limitations / RUN_NOTES must be rebuilt (zoo build)."""
    mislas = json.loads((entry.folder / 'config.json').read_text())['mislas']
    metrics = json.loads((entry.folder / 'metrics.json').read_text())
    card = (entry.folder / 'README.md').read_text()
    stated = card.split('## Limitations', 1)[1].split('## Citation', 1)[0]
    for line in zoo.card_limitations(entry.name, mislas, metrics['top1'], entry.source.split('/')[0]):
        assert f'- {line}\n' in stated, line


def test_public_command_leaves_no_machine_path():
    command = ('/home/u/clone/train.py --preset cifar10-lt-if100 --dataset /data/c10 --output-dir /home/u/runs/a '
               '--stage 2 --init local-dir:/home/u/runs/b/stage1 --set dataset.data_root=/mnt/images '
               '--set stage1.milestones=[160,180] --set=model.trunk_weights=~/w.safetensors')
    public = zoo.public_command(command)
    assert public == ("python train.py --preset cifar10-lt-if100 --dataset uoft-cs/cifar10 --output-dir runs/a "
                      "--stage 2 --init local-dir:runs/b/stage1 --set dataset.data_root=images "
                      "--set 'stage1.milestones=[160,180]' --set=model.trunk_weights=w.safetensors")
    for source, shown in (('local-dir:/x/runs/c/stage1', 'local-dir:runs/c/stage1'), ('/x/runs/c/stage1', 'runs/c/stage1'),
                          ('hf-hub:mislas-timm/x', 'hf-hub:mislas-timm/x'),
                          ('resnet32_cifar.cifar10_lt_if100_mixup', 'resnet32_cifar.cifar10_lt_if100_mixup')):
        assert zoo.public_meta({'source': source})['source'] == shown
        assert zoo.public_meta({'init': source})['init'] == shown  # the --init source of a fine-tuned stage 1
        assert zoo.public_meta({'stage1': {'init': source}})['stage1']['init'] == shown
