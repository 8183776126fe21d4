import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import mislas_timm
from mislas_timm import zoo
from mislas_timm.hub import CardError, HubError, check_card_matches_metrics, load_model, prepare_upload, push_to_hub

from .hub_fixtures import CIFAR10_NAMES, build_offline_cache, make_hub_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_hub_folder(tmp_path_factory.mktemp('hub') / 'model')


def test_folder_layout_and_config(folder):
    assert sorted(p.name for p in folder.iterdir()) == sorted(mislas_timm.hub.HUB_FILES)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'resnet20_cifar' and config['num_classes'] == 10
    assert config['label_names'] == CIFAR10_NAMES
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 32, 32] and cfg['crop_pct'] == 1.0 and cfg['mean'] == [0.4914, 0.4822, 0.4465]
    assert {'class_counts', 'data_seed', 'imb_factor', 'split_sha256', 'rank_split', 'preset'} <= set(config['mislas'])
    assert (folder / 'reliability.png').read_bytes()[:4] == b'\x89PNG'


def test_local_dir_round_trip(folder):
    x = torch.randn(2, 3, 32, 32)
    original = timm.create_model('resnet20_cifar', num_classes=10)
    from safetensors.torch import load_file
    original.load_state_dict(load_file(folder / 'model.safetensors'))
    expected = original.eval()(x)
    for source in (f'local-dir:{folder}', str(folder)):
        model = load_model(source)
        assert torch.equal(model(x), expected)
        assert model.pretrained_cfg['label_names'] == CIFAR10_NAMES
        assert model.mislas_config['rank_split'] == [3, 7]
    plain = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert torch.equal(plain(x), expected)


def run_offline(code, cache, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / 'hf_home'),
               PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_offline_hub_cache_under_zoo_repo_id(folder, tmp_path):
    repo_id = zoo.get('resnet32_cifar.cifar10_lt_if100_mislas').hub_id
    cache = tmp_path / 'hub'
    build_offline_cache(cache, repo_id, folder)
    code = textwrap.dedent(f'''
        import torch, timm, mislas_timm
        from safetensors.torch import load_file
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        ref = timm.create_model("resnet20_cifar", num_classes=10)
        ref.load_state_dict(load_file({str(folder / 'model.safetensors')!r}))
        a = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
        b = mislas_timm.load_model("hf-hub:{repo_id}")
        assert torch.equal(a(x), ref.eval()(x)) and torch.equal(b(x), a(x))
        assert b.mislas_config["class_counts"][0] == 5000
        print("OK", a.pretrained_cfg["label_names"][8])
        try:  # a timm pretrained name that is not in the cache: one line
            mislas_timm.load_model("resnet18.a1_in1k", allow_timm_names=True)
        except ValueError as err:
            print(err)
    ''')
    result = run_offline(code, cache, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ok, line = result.stdout.strip().splitlines()
    assert ok == 'OK ship'
    assert line.startswith('cannot fetch resnet18.a1_in1k (LocalEntryNotFoundError'), line


def test_card_usage_code_runs_as_written(folder, tmp_path):
    card = (folder / 'README.md').read_text()
    code = re.search(r'```python\n(.*?)```', card, re.S).group(1)
    cache = tmp_path / 'hub'
    build_offline_cache(cache, 'mislas-timm/test-model', folder)
    result = run_offline(code, cache, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    name, conf = result.stdout.split()
    assert name in CIFAR10_NAMES and 0 < float(conf) <= 1


def test_card_agrees_with_metrics(folder):
    metrics = json.loads((folder / 'metrics.json').read_text())
    card = (folder / 'README.md').read_text()
    check_card_matches_metrics(card, metrics)
    assert f'{100 * metrics["top1"]:.2f}' in card and f'{100 * metrics["ece"]:.2f}' in card
    front = mislas_timm.hub.card.card_front_matter(card)
    assert front['library_name'] == 'timm' and front['license'] == 'apache-2.0'
    assert {'long-tailed', 'calibration', 'mislas'} <= set(front['tags'])
    bad = card.replace(f'value: {round(100 * metrics["ece"], 2)}', 'value: 1.23', 1)
    with pytest.raises(CardError, match='ece'):
        check_card_matches_metrics(bad, metrics)


def test_push_checks_folder_and_token(folder, tmp_path, monkeypatch):
    assert prepare_upload(folder) == folder
    monkeypatch.setenv('HF_HUB_DISABLE_IMPLICIT_TOKEN', '1')
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_TOKEN_PATH', str(tmp_path / 'no-token'))
    with pytest.raises(HubError, match='no Hugging Face token'):
        push_to_hub(folder, 'someone/model')
    incomplete = tmp_path / 'incomplete'
    incomplete.mkdir()
    for name in ('config.json', 'model.safetensors'):
        (incomplete / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(HubError, match='missing'):
        push_to_hub(incomplete, 'someone/model', token='hf_secret_value')


def test_push_cli_never_prints_token(folder, tmp_path):
    env = dict(os.environ, HF_TOKEN='hf_do_not_print_me', HF_HUB_OFFLINE='1', PYTHONPATH=ROOT,
               HF_HOME=str(tmp_path / 'hf'))
    result = subprocess.run([sys.executable, '-m', 'mislas_timm.hub', 'push', str(folder), 'someone/model'],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert 'hf_do_not_print_me' not in result.stdout + result.stderr


def test_bad_sources(folder, tmp_path):
    with pytest.raises(HubError, match='unknown model source'):
        load_model('no-such-model')
    truncated = tmp_path / 'truncated'
    truncated.mkdir()
    (truncated / 'config.json').write_text((folder / 'config.json').read_text())
    data = (folder / 'model.safetensors').read_bytes()
    (truncated / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(HubError, match='truncated'):
        load_model(str(truncated))
    (truncated / 'model.safetensors').unlink()
    with pytest.raises(HubError, match='no model.safetensors'):
        load_model(f'local-dir:{truncated}')
    unknown = tmp_path / 'unknown'
    unknown.mkdir()
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'resnet7_mystery'
    (unknown / 'config.json').write_text(json.dumps(config))
    (unknown / 'model.safetensors').write_bytes(data)
    with pytest.raises(HubError, match='import mislas_timm'):
        load_model(str(unknown))


def test_one_resolver_of_model_sources(folder, tmp_path, monkeypatch):
    """mislas_timm.sources: every kind of source, and one line naming it for every bad one."""
    from mislas_timm import sources
    from mislas_timm.sources import SourceError, resolve_source

    assert HubError is SourceError and issubclass(SourceError, ValueError)
    assert mislas_timm.hub.resolve_source is resolve_source
    monkeypatch.chdir(tmp_path)
    tag = 'resnet32_cifar.cifar10_lt_if100_mislas'
    assert resolve_source(tag) == f'local-dir:{zoo.get(tag).folder}'
    assert resolve_source(str(folder)) == resolve_source(f'local-dir:{folder}') == f'local-dir:{folder.resolve()}'
    (tmp_path / 'rel').symlink_to(folder)
    assert resolve_source('rel') == f'local-dir:{(tmp_path / "rel").resolve()}'
    assert resolve_source('hf-hub:someone/model') == 'hf-hub:someone/model'
    # timm pretrained names only where asked for (--init); resolving one fetches nothing
    assert resolve_source('resnet50.a1_in1k', allow_timm_names=True) == 'resnet50.a1_in1k'
    assert resolve_source('resnet32_cifar', allow_timm_names=True) == 'resnet32_cifar'  # its default: the zoo's IF100
    assert sources.source_config('resnet50.a1_in1k') == {}
    bad = {
        ('resnet50.a1_in1k', False): "unknown model source 'resnet50.a1_in1k' (it is a timm pretrained name",
        ('resnet50.no_such_tag', True): "'resnet50.no_such_tag': timm knows the architecture resnet50 but has no "
                                        'pretrained weights of that name (its pretrained names: resnet50.a1_in1k',
        ('resnet20_cifar', True): "'resnet20_cifar': timm knows the architecture resnet20_cifar but has no "
                                  'pretrained weights of that name (it has none)',
        ('no_such_model.x', True): "unknown model source 'no_such_model.x': not a zoo tag",
        ('hf-hub:no-slash', False): "'hf-hub:no-slash': write hf-hub:ORG/NAME",
        (f'local-dir:{tmp_path / "gone"}', False): f'local-dir:{tmp_path / "gone"}: no folder at {tmp_path / "gone"}',
        ('', False): 'model source must be a non-empty string',
    }
    for (source, allow), start in bad.items():
        with pytest.raises(SourceError) as err:
            resolve_source(source, allow_timm_names=allow)
        assert str(err.value).startswith(start) and '\n' not in str(err.value), str(err.value)
    with pytest.raises(SourceError, match=r"not a timm pretrained name; pass a zoo tag, .* or a timm pretrained"):
        resolve_source('no_such_model.x', allow_timm_names=True)
    with pytest.raises(SourceError, match='not a Hub folder'):
        resolve_source(str(tmp_path))  # a folder, but not a Hub folder



def test_card_shows_the_training_seeds_when_there_are_two_or_more(folder):
    """metrics.json's seed_runs (fractions): one row per seed (sorted, the card's own weights marked), the
    mean +- SD (sample SD) in %, and the one-seed limitation replaced; one seed: the card as before."""
    from mislas_timm.hub.card import render_card

    config = json.loads((folder / 'config.json').read_text())
    config['mislas']['seed'] = 1
    metrics = json.loads((folder / 'metrics.json').read_text())
    runs = [{'seed': 2, 'top1': 0.84, 'ece': 0.05, 'adaptive_ece': 0.045, 'nll': 0.7},
            {'seed': 0, 'top1': 0.80, 'ece': 0.03, 'adaptive_ece': None, 'nll': 0.5},
            {'seed': 1, 'top1': 0.82, 'ece': 0.04, 'adaptive_ece': 0.035, 'nll': 0.6}]
    plain = render_card(config, metrics, {})
    assert '## Over training seeds' not in plain and 'One training run with one seed' in plain
    assert render_card(config, dict(metrics, seed_runs=runs[2:]), {}) == plain  # one seed: nothing to add
    card = render_card(config, dict(metrics, seed_runs=runs), {})
    check_card_matches_metrics(card, metrics)
    section = card.split('## Over training seeds\n', 1)[1].split('\n## ', 1)[0]
    rows = [line for line in section.splitlines() if line.startswith('| ') and not line.startswith('| training')]
    # top-1 80 / 82 / 84: mean 82, SD sqrt((4 + 0 + 4) / 2) = 2 points; ECE 3 / 4 / 5: 4 +- 1; adaptive ECE over
    # the two seeds that have it: 4.0 +- sqrt(2 * 0.5^2) = 0.71; NLL 0.6 +- 0.1
    assert rows == ['| 0 | 80.00 | 3.00 | n/a | 0.5000 |', '| 1 (these weights) | 82.00 | 4.00 | 3.50 | 0.6000 |',
                    '| 2 | 84.00 | 5.00 | 4.50 | 0.7000 |',
                    '| mean +- SD | 82.00 +- 2.00 | 4.00 +- 1.00 | 4.00 +- 0.71 | 0.6000 +- 0.1000 |']
    assert f'same {metrics["num_samples"]} images of the `test` split' in section and "seed 1's" in section
    assert 'One training run with one seed' not in card
    assert "- 3 training runs, seeds 0, 1, 2; the weights here are seed 1's." in card


def test_card_of_a_calibrated_balanced_softmax_model_says_what_it_is(folder):
    """A stage 1 trained with Balanced Softmax is not called cross-entropy, and a post-hoc step recorded by
    python -m mislas_timm.calibrate is stated: its value, where it was fitted, and its command."""
    from mislas_timm.hub.card import render_card

    config = json.loads((folder / 'config.json').read_text())
    metrics = json.loads((folder / 'metrics.json').read_text())
    mislas = config['mislas']
    mislas.update(stage=1, recipe={'epochs': 200, 'mixup_alpha': 1.0, 'loss': 'balanced_softmax'},
                  command='python train.py --preset cifar10-lt-if100 --set stage1.loss=balanced_softmax')
    plain = render_card(config, metrics, {})
    assert 'Balanced Softmax' in plain and 'mixup (alpha 1.0)' in plain and 'cross-entropy' not in plain
    assert 'post-hoc' not in plain
    mislas['posthoc'] = {'method': 'temperature', 'temperature': 0.8125, 'num_val': 200, 'fitted_on': 'validation',
                         'val_before': {'nll': 0.61, 'top1': 0.8}, 'val_after': {'nll': 0.55, 'top1': 0.8},
                         'command': 'python -m mislas_timm.calibrate runs/bsm/stage1 --method temperature'}
    card = render_card(config, metrics, {})
    check_card_matches_metrics(card, metrics)
    summary = card.split('\n# ', 1)[1].split('\n## ', 1)[0]
    assert 'Then temperature scaling (T = 0.8125), fitted on the 200 held-out validation images' in summary
    assert ('- post-hoc: temperature scaling, T = 0.8125, fitted on 200 validation images (validation NLL 0.6100 -> '
            '0.5500), folded into the classifier') in card
    commands = card.split('```bash\n', 1)[1].split('```', 1)[0].splitlines()
    assert commands[-2:] == ['# post-hoc, fitted on the validation split',
                             'python -m mislas_timm.calibrate runs/bsm/stage1 --method temperature']
