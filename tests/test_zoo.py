"""The shipped model zoo: every folder complete, config / card / metrics.json in agreement, loadable.

Re-evaluating the models on the full CIFAR-10 test split needs data the tests may not assume; it is
`python -m mislas_timm.zoo --verify PATH` (its output is in BENCHMARKS.md). The evaluator's exact
agreement with train.py's report is tested on tiny data in test_training.py.
"""
import json
import subprocess
import sys
import textwrap
import warnings
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
    for line in zoo.card_limitations(entry.name, mislas, metrics['top1'], entry.source.split('/')[0],
                                     metrics.get('seed_runs')):
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
    # a calibrated model: python -m mislas_timm.calibrate's record (and one before it) keeps no machine path
    calibrate = ('python -m mislas_timm.calibrate /home/u/runs/bsm/stage1 --method temperature --dataset /data/c10 '
                 '--out /home/u/runs/bsm-ts')
    posthoc = {'method': 'temperature', 'temperature': 0.9, 'source': '/home/u/runs/bsm/stage1', 'command': calibrate}
    public = zoo.public_meta({'posthoc': dict(posthoc, previous=dict(posthoc))})['posthoc']
    for record in (public, public['previous']):
        assert record['source'] == 'runs/bsm/stage1' and record['temperature'] == 0.9
        assert record['command'] == ('python -m mislas_timm.calibrate runs/bsm/stage1 --method temperature '
                                     '--dataset uoft-cs/cifar10 --out runs/bsm-ts')


# ----------------------------------------------------------------------------------------------
# Training seeds: metrics.json seed_runs, the card and the README table (zoo seeds / add_seed_runs).

def test_summarize_seed_runs_is_mean_and_sample_sd():
    from mislas_timm.metrics import summarize_seed_runs

    runs = [{'seed': 0, 'top1': 0.80, 'ece': 0.031, 'adaptive_ece': 0.02, 'nll': 0.50},
            {'seed': 1, 'top1': 0.82, 'ece': 0.035, 'adaptive_ece': None, 'nll': 0.53},
            {'seed': 2, 'top1': 0.87, 'ece': 0.030, 'nll': 0.62}]
    stats = summarize_seed_runs(runs)
    assert set(stats) == {'top1', 'ece', 'adaptive_ece', 'nll'}
    # top-1: mean 2.49 / 3 = 0.83; SD sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2) = sqrt(0.0013)
    assert stats['top1']['n'] == 3 and stats['top1']['mean'] == pytest.approx(0.83, rel=1e-12)
    assert stats['top1']['sd'] == pytest.approx(0.0013 ** 0.5, rel=1e-12)
    # ECE 0.031 / 0.035 / 0.030: mean 0.032, SD sqrt((0.001^2 + 0.003^2 + 0.002^2) / 2) = sqrt(7e-6)
    assert stats['ece']['mean'] == pytest.approx(0.032, rel=1e-12)
    assert stats['ece']['sd'] == pytest.approx(7e-6 ** 0.5, rel=1e-12)
    # NLL 0.50 / 0.53 / 0.62: mean 0.55, SD sqrt((0.05^2 + 0.02^2 + 0.07^2) / 2) = sqrt(0.0039)
    assert stats['nll']['mean'] == pytest.approx(0.55, rel=1e-12) and stats['nll']['sd'] == pytest.approx(0.0039 ** 0.5, rel=1e-12)
    # a run without a value leaves that key's statistics; one value: no SD; none: no mean
    assert stats['adaptive_ece'] == {'mean': 0.02, 'sd': None, 'n': 1}
    assert summarize_seed_runs([{'seed': 0, 'top1': None}], keys=('top1',)) == {'top1': {'mean': None, 'sd': None, 'n': 0}}
    assert summarize_seed_runs(runs[::-1]) == stats  # order does not matter


SHIPPED_NAME = 'resnet32_cifar.cifar10_lt_if100_mislas'
SEED_META = {'class_counts': [4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 'rank_split': [3, 7],
             'data_seed': 0, 'imb_factor': 100, 'profile': 'exp', 'split_sha256': 'ab' * 32, 'val_per_class': 20,
             'val_sha256': 'cd' * 32, 'preset': 'cifar10-lt-if100', 'stage': 2, 'image_encoding': 'PNG (lossless)',
             'recipe': {'epochs': 10, 'head': 'mislas', 'loss': 'las', 'smooth_head': 0.3, 'smooth_tail': 0.0,
                        'shift_bn': False},
             'stage1': {'recipe': {'epochs': 200, 'mixup_alpha': 1.0, 'loss': 'ce'}, 'train_time_s': 9.0}}


def _seed_folder(folder: Path, seed: int, dataset: Path, shipped: bool = False, **changes) -> Path:
    """A stage-2-like Hub folder of a random resnet32_cifar trained with ``seed``: the zoo model's own folder
    (as zoo build writes it, with one extra limitation line) or a run folder of train.py (its machine paths,
    its own tag); ``changes``: mislas keys (``recipe`` replaces the recipe) that make it another recipe."""
    import copy

    import timm
    from mislas_timm.evaluation import evaluate
    from mislas_timm.hub import save_hub_folder

    torch.manual_seed(seed)
    model = timm.create_model('resnet32_cifar', num_classes=10)
    with torch.no_grad():  # a random network is confident in one class: damp it, and lean it to class `seed`,
        model(torch.randn(64, 3, 32, 32))  # so that each seed's top-1 differs on the uneven test split
        head = model.get_classifier()
        head.weight.mul_(1e-3)
        head.bias.zero_()
        head.bias[seed % 10] = 1.0
    model.eval()
    meta = dict(copy.deepcopy(SEED_META), seed=seed, **changes)
    meta.update({'dataset': 'uoft-cs/cifar10', 'command': 'python train.py --preset cifar10-lt-if100'} if shipped else
                {'dataset': str(dataset), 'command': f'/home/u/train.py --output-dir /home/u/runs/s{seed}'})
    model.mislas_config = meta
    tag = {'tag': 'cifar10_lt_if100_mislas', 'hf_hub_id': f'mislas-timm/{SHIPPED_NAME}'} if shipped else \
        {'tag': 'cifar10_lt_if100_stage2'}
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, label_names=CIFAR10_NAMES, **tag)
    with warnings.catch_warnings():  # the run recorded as trained on JPEG images is measured on PNG ones here
        warnings.simplefilter('ignore')
        metrics = evaluate(model, str(dataset), split='test', dataset_name='uoft-cs/cifar10')
    context = zoo._card_context(zoo.get(SHIPPED_NAME), meta, metrics, zoo.DATASET_ID, ['A tiny test model.']) \
        if shipped else {}
    return save_hub_folder(model, folder, label_names=CIFAR10_NAMES, mislas=meta, metrics=metrics,
                           card_context=context)


@pytest.fixture(scope='module')
def seed_data(tmp_path_factory):
    """A tiny CIFAR-10-schema data set (PNG, 32x32; 2-4 test images per class), the zoo model's folder (seed 0) and
    run folders: seeds 1 and 2 of its recipe, and runs that differ from it."""
    import datasets
    from .conftest import make_image_dataset

    root = tmp_path_factory.mktemp('seeds')
    data = root / 'cifar10-tiny'
    datasets.DatasetDict({'train': make_image_dataset([3] * 10, size=32, seed=0, class_names=CIFAR10_NAMES),
                          'test': make_image_dataset([4, 2, 3] + [2] * 7, size=32, seed=1, class_names=CIFAR10_NAMES),
                          }).save_to_disk(str(data))
    recipe = dict(SEED_META['recipe'], smooth_head=0.1)
    folders = {'shipped': _seed_folder(root / 'zoo' / SHIPPED_NAME, 0, data, shipped=True),
               **{f'seed{s}': _seed_folder(root / 'runs' / f's{s}' / 'stage2', s, data) for s in (1, 2)},
               'seed0': _seed_folder(root / 'runs' / 's0' / 'stage2', 0, data),
               'smoothing': _seed_folder(root / 'runs' / 'eps' / 'stage2', 3, data, recipe=recipe),
               'data_seed': _seed_folder(root / 'runs' / 'ds' / 'stage2', 4, data, data_seed=1),
               'posthoc': _seed_folder(root / 'runs' / 'ts' / 'stage2', 6, data,
                                       posthoc={'method': 'temperature', 'temperature': 0.9}),
               'jpeg': _seed_folder(root / 'runs' / 'jpeg' / 'stage2', 5, data, image_encoding='JPEG quality 75')}
    return data, folders


@pytest.fixture
def zoo_copy(seed_data, tmp_path, monkeypatch):
    """The zoo model's folder copied into a zoo folder of its own ($MISLAS_ZOO_DIR), as shipped there."""
    import shutil

    shutil.copytree(seed_data[1]['shipped'].parent, tmp_path / 'zoo')
    monkeypatch.setenv('MISLAS_ZOO_DIR', str(tmp_path / 'zoo'))
    folder = tmp_path / 'zoo' / SHIPPED_NAME
    assert zoo.get(SHIPPED_NAME).folder == folder
    return folder


def _files(folder: Path):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_add_seed_runs_records_every_seed_and_keeps_the_weights(seed_data, zoo_copy):
    from mislas_timm.evaluation import evaluate
    from mislas_timm.hub.card import mean_sd, render_card
    from mislas_timm.metrics import summarize_seed_runs

    data, runs = seed_data
    before = _files(zoo_copy)
    saved = json.loads(before['metrics.json'])
    metrics = zoo.add_seed_runs(zoo_copy, [str(runs['seed2']), str(runs['seed1'])], str(data))
    after = _files(zoo_copy)
    assert json.loads(after['metrics.json']) == metrics
    # the weights, config and diagram are untouched, and every other key of metrics.json
    for name in ('model.safetensors', 'config.json', 'reliability.png'):
        assert after[name] == before[name], name
    assert {k: v for k, v in metrics.items() if k != 'seed_runs'} == saved
    # sorted by seed, fractions; the shipped seed's entry is its own metrics.json, the others measured anew
    assert [r['seed'] for r in metrics['seed_runs']] == [0, 1, 2]
    assert metrics['seed_runs'][0] == {k: saved[k] for k in ('top1', 'ece', 'adaptive_ece', 'nll')} | {'seed': 0}
    for entry in metrics['seed_runs'][1:]:
        report = evaluate(mislas_timm.load_model(str(runs[f'seed{entry["seed"]}'])), str(data), split='test')
        for key in ('top1', 'ece', 'adaptive_ece', 'nll'):
            assert entry[key] == pytest.approx(report[key], rel=1e-9, abs=1e-12), key
        assert 0 <= entry['top1'] <= 1 and 0 <= entry['ece'] <= 1
    assert len({r['top1'] for r in metrics['seed_runs']}) == 3  # three different models
    # the card: what build renders with the same context, agreeing with metrics.json, the seeds section,
    # the limitations for three seeds (and the extra line the build added kept)
    card = after['README.md'].decode()
    config = json.loads(after['config.json'])
    entry = zoo.get(SHIPPED_NAME)
    context = zoo._card_context(entry, config['mislas'], metrics, zoo.DATASET_ID, ['A tiny test model.'])
    assert card == render_card(config, metrics, context)
    check_card_matches_metrics(card, metrics)
    prepare_upload(zoo_copy)
    top1 = summarize_seed_runs(metrics['seed_runs'])['top1']
    assert f'| mean +- SD | {mean_sd(top1)} |' in card and '| 0 (these weights) |' in card
    stated = card.split('## Limitations', 1)[1]
    assert "- 3 training runs of the same recipe, seeds 0, 1, 2; the shipped weights are seed 0's." in stated
    assert 'One training run with one seed' not in card and '- A tiny test model.\n' in stated
    assert f'Over the 3 seeds top-1 is {mean_sd(top1)}%.' in stated  # beside the gap to the paper's 82.1
    for line in zoo.card_limitations(SHIPPED_NAME, config['mislas'], metrics['top1'], 'if100-mixup-png',
                                     metrics['seed_runs']):
        assert f'- {line}\n' in stated
    # the README table: the model's own number, then mean +- SD over the seeds (an independent formula here)
    import statistics
    values = {k: [100 * r[k] for r in metrics['seed_runs']] for k in ('top1', 'ece')}
    [row] = zoo.markdown_table().splitlines()[2:]
    cells = [c.strip() for c in row.split('|')]
    for cell, key in ((cells[3], 'top1'), (cells[4], 'ece')):
        expected = (f'{100 * metrics[key]:.2f} ({statistics.mean(values[key]):.2f} +- '
                    f'{statistics.stdev(values[key]):.2f}, 3 seeds)')
        assert cell == expected, (cell, expected)


def test_add_seed_runs_again_replaces_the_list(seed_data, zoo_copy):
    data, runs = seed_data
    first = zoo.add_seed_runs(zoo_copy, [str(runs['seed1']), str(runs['seed2'])], str(data))
    files = _files(zoo_copy)
    assert zoo.add_seed_runs(zoo_copy, [str(runs['seed2']), str(runs['seed1'])], str(data)) == first
    assert _files(zoo_copy) == files  # idempotent, byte for byte
    fewer = zoo.add_seed_runs(zoo_copy, [str(runs['seed1'])], str(data))
    assert fewer['seed_runs'] == first['seed_runs'][:2]  # replaced, the shipped seed kept
    # --keep-recorded: seed 1 recorded (its folder could be gone), seed 2 added: the full list again
    assert zoo.add_seed_runs(zoo_copy, [str(runs['seed2'])], str(data), keep_recorded=True) == first
    assert _files(zoo_copy) == files
    zoo.add_seed_runs(zoo_copy, [str(runs['seed1'])], str(data))
    card = (zoo_copy / 'README.md').read_text()
    assert "2 training runs of the same recipe, seeds 0, 1;" in card and '| 2 |' not in card


@pytest.mark.parametrize('bad, message', [
    ('smoothing', r"runs/eps/stage2 is not resnet32_cifar.cifar10_lt_if100_mislas's recipe with another seed: "
                  r"recipe.smooth_head is 0.1 there but 0.3 in the shipped model; pass runs that differ in the "
                  r"training seed only"),
    ('data_seed', r"data_seed is 1 there but 0 in the shipped model"),
    ('posthoc', r"posthoc.method is 'temperature' there but None in the shipped model"),
    ('seed0', r"runs/s0/stage2 has training seed 0, as .*resnet32_cifar.cifar10_lt_if100_mislas \(the shipped "
              r"model\): pass one run per seed"),
    ('seed1', r"runs/s1/stage2 has training seed 1, as .*runs/s1/stage2: pass one run per seed"),
], ids=['other-smoothing', 'other-data-seed', 'calibrated', 'shipped-seed', 'seed-twice'])
def test_add_seed_runs_refuses_another_recipe_before_any_evaluation(seed_data, zoo_copy, bad, message):
    """One line naming the key and both values (or the seed), before the data set is even opened (it does not
    exist here), nothing written; a good run listed first is not evaluated either."""
    data, runs = seed_data
    before = _files(zoo_copy)
    with pytest.raises(zoo.ZooError, match=message) as err:
        zoo.add_seed_runs(zoo_copy, [str(runs['seed1']), str(runs[bad])], str(zoo_copy.parent / 'no-such-data'))
    assert '\n' not in str(err.value)
    assert _files(zoo_copy) == before


def test_add_seed_runs_refuses_a_run_trained_on_other_images(seed_data, zoo_copy):
    data, runs = seed_data
    before = _files(zoo_copy)
    with pytest.raises(zoo.ZooError, match=r'runs/jpeg/stage2 was trained on images stored as JPEG quality 75 but '
                                           r'.* holds PNG \(lossless\): pass the copy it was trained on'):
        zoo.add_seed_runs(zoo_copy, [str(runs['seed1']), str(runs['jpeg'])], str(data))
    assert _files(zoo_copy) == before


def test_zoo_seeds_command_line(seed_data, zoo_copy, capsys):
    data, runs = seed_data
    assert zoo.main(['seeds', 'cifar10_lt_if100_mislas', str(runs['seed1']), '--dataset', str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    metrics = json.loads((zoo_copy / 'metrics.json').read_text())
    assert [r['seed'] for r in metrics['seed_runs']] == [0, 1]
    assert out[0] == f'seed 0: top-1 {100 * metrics["top1"]:.2f}%, ECE {100 * metrics["ece"]:.2f}%'
    assert out[-1] == f'wrote {zoo_copy / "metrics.json"} and {zoo_copy / "README.md"}'
    # bad input: one line on stderr, exit code 2, nothing written
    before = _files(zoo_copy)
    for argv, expected in (
            (['seeds', 'cifar10_lt_if7_mislas', str(runs['seed1'])], "error: 'cifar10_lt_if7_mislas' is not a zoo name"),
            (['seeds', 'resnet32_cifar.cifar10_lt_if100_ce', str(runs['seed1'])],
             'error: resnet32_cifar.cifar10_lt_if100_ce has no shipped folder'),
            (['seeds', SHIPPED_NAME, str(runs['data_seed'])], 'error: ' + str(runs['data_seed'])),
            (['seeds', SHIPPED_NAME, str(runs['seed2']), '--dataset', str(zoo_copy / 'missing')], 'error: ')):
        argv = argv if '--dataset' in argv else argv + ['--dataset', str(data)]
        assert zoo.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count('\n') == 1, err
    assert _files(zoo_copy) == before


def test_zoo_build_keeps_the_seed_runs_of_the_model_it_rebuilds(seed_data, zoo_copy):
    """Rebuilding a zoo folder from the same seed's run keeps its seed_runs (that seed's entry re-measured);
    a model of another seed starts without them."""
    data, runs = seed_data
    recorded = zoo.add_seed_runs(zoo_copy, [str(runs['seed1']), str(runs['seed2'])], str(data))['seed_runs']
    for source, seeds in (('s0/stage2', [0, 1, 2]), ('s1/stage2', None)):
        entry = zoo.ZooEntry(SHIPPED_NAME, zoo.get(SHIPPED_NAME).description, source)
        [folder] = zoo.build(str(runs['seed0'].parents[1]), str(data), zoo_dir=zoo_copy.parent, entries=[entry])
        metrics = json.loads((folder / 'metrics.json').read_text())
        card = (folder / 'README.md').read_text()
        check_card_matches_metrics(card, metrics)
        if seeds is None:
            assert 'seed_runs' not in metrics and '## Over training seeds' not in card
        else:
            assert metrics['seed_runs'] == recorded  # seed 0's run is the shipped weights: the same numbers
            assert '## Over training seeds' in card
