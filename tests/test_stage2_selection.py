"""stage2.smoothing_candidates: stage 2's label-aware smoothing chosen on the validation split (lowest NLL),
the finetune preset's default. Tiny data (conftest's 4 colours, long-tail IF 10), 2 + 2 epochs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mislas_timm.config import ConfigError, apply_overrides, list_presets, load_preset, parse_config
from .tolerances import assert_close_f32

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
# No smoothing is clearly best on these easy colours (validation NLL ~0.16 against ~0.4 and ~0.6): listed last,
# so the kept candidate is trained after two others, which must not change its stream.
CANDIDATES = [[0.4, 0.1], [0.2, 0.0], [0.0, 0.0]]
SELECT = ['--set', f'stage2.smoothing_candidates={json.dumps(CANDIDATES)}']

# Dies (as abruptly as SIGKILL) right after the named checkpoint of the named epoch is written.
KILL_SCRIPT = textwrap.dedent('''
    import os, sys
    import mislas_timm.training as t
    original = t.Checkpointer.save
    def save_then_die(self, epoch, *args):
        original(self, epoch, *args)
        if self.stage == os.environ["DIE_CHECKPOINT"] and epoch == int(os.environ["DIE_EPOCH"]):
            os._exit(137)
    t.Checkpointer.save = save_then_die
    sys.argv = ["train.py"] + sys.argv[1:]
    import runpy
    runpy.run_path(os.path.join(os.environ["PYTHONPATH"], "train.py"), run_name="__main__")
''')


@pytest.fixture(scope='module')
def config_file(tiny_config_file) -> Path:
    """conftest's tiny CIFAR-LT config: it already holds out longtail.val_per_class (20) validation images."""
    return tiny_config_file


def train(*args, script=None, env=None, check=True):
    launcher = ['-c', script] if script else [str(ROOT / 'train.py')]
    result = subprocess.run([sys.executable, *launcher, *map(str, args)], capture_output=True, text=True,
                            env=env or ENV, cwd=ROOT, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def stage1(tmp_path_factory, config_file) -> Path:
    out = tmp_path_factory.mktemp('s1') / 'run'
    train('--config', config_file, '--stage', '1', '--output-dir', out)
    return out / 'stage1'


def stage2_args(config_file, stage1, out):
    return ['--config', config_file, '--stage', '2', '--init', stage1, '--output-dir', out]


@pytest.fixture(scope='module')
def selected(tmp_path_factory, config_file, stage1) -> Path:
    out = tmp_path_factory.mktemp('sel') / 'run'
    train(*stage2_args(config_file, stage1, out), *SELECT)
    return out


def selection_of(run: Path):
    return json.loads((run / 'stage2' / 'config.json').read_text())['mislas']


def cli_config(*argv, stage='2'):
    """The config train.py ARGV runs with (what the start model decides filled in, as run_training does)."""
    from mislas_timm.initialization import resolve_start
    from mislas_timm.train import build_config, parse_args
    args = parse_args([*map(str, argv)])
    return resolve_start(build_config(args), stage, Path(args.output_dir))[0]


def weights_equal(run: Path, reference: Path) -> None:
    a, b = load_file(reference / 'stage2' / 'model.safetensors'), load_file(run / 'stage2' / 'model.safetensors')
    assert a.keys() == b.keys()
    for k in a:
        assert_close_f32(b[k], a[k], ulps=8, what=k)


# ------------------------------------------------------------------------------------------------- config

def test_candidates_are_validated_all_at_once_and_paper_presets_have_none():
    for name in list_presets():
        cfg = parse_config(load_preset(name))
        if name == 'finetune':
            candidates = cfg.stage2.smoothing_candidates
            assert [0.3, 0.0] in candidates and [0.0, 0.0] in candidates and cfg.dataset.val_per_class
        else:  # every paper preset trains smooth_head / smooth_tail as before
            assert cfg.stage2.smoothing_candidates is None, name
    raw = load_preset('finetune')
    with pytest.raises(ConfigError) as err:
        parse_config(apply_overrides(raw, ['stage2.smoothing_candidates=[[0.1], [1.5, 0], [0.2, 0], [0.2, 0]]',
                                           'stage2.loss=ce']))
    lines = err.value.problems
    assert len(lines) == 4, lines
    for needle in ('entry 0 [0.1] must be a pair', 'entry 1 [1.5, 0.0] is out of range', 'entry 3 [0.2, 0.0] repeats',
                   'stage2.loss is ce'):
        assert any(needle in line for line in lines), (needle, lines)
    with pytest.raises(ConfigError, match=r'list of \[smooth_head, smooth_tail\] pairs'):
        parse_config(apply_overrides(raw, ['stage2.smoothing_candidates=[0.1, 0.0]']))
    with pytest.raises(ConfigError, match='names no candidate'):
        parse_config(apply_overrides(raw, ['stage2.smoothing_candidates=[]']))


def test_candidates_without_a_validation_split_are_refused_in_one_line_before_any_work(config_file, tmp_path,
                                                                                        capsys):
    from mislas_timm.stage2_selection import check_validation
    from mislas_timm.train import main

    out = tmp_path / 'out'
    code = main(['--config', str(config_file), '--output-dir', str(out), '--set', 'longtail.val_per_class=0',
                 '--set', 'stage2.smoothing_candidates=[[0.1, 0.0]]'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count('\n') == 0, err
    assert 'stage2.smoothing_candidates' in err and 'validation split' in err and 'longtail.val_per_class' in err
    assert not out.exists()
    # The same config with its validation split: accepted; one whose validation split came out empty: refused.
    cfg = cli_config('--config', config_file, '--output-dir', out, '--set', 'stage2.smoothing_candidates=[[0.1, 0]]',
                     stage='all')
    with pytest.raises(ConfigError, match='no validation images'):
        check_validation(cfg, [])
    check_validation(cfg, [0])


# ---------------------------------------------------------------------------------------------- selection

@pytest.mark.slow
def test_the_kept_candidate_has_the_lowest_validation_nll(selected):
    mislas = selection_of(selected)
    selection = mislas['stage2_selection']
    records = selection['candidates']
    assert [[r['smooth_head'], r['smooth_tail']] for r in records] == CANDIDATES
    nlls = [r['val_nll'] for r in records]
    best = min(range(len(nlls)), key=nlls.__getitem__)
    assert selection['criterion'] == 'val_nll' and selection['split'] == 'validation'
    assert selection['chosen'] == {'index': best, **{k: records[best][k] for k in ('smooth_head', 'smooth_tail')}}
    # The saved model is the kept candidate: its recipe names that pair.
    assert (mislas['recipe']['smooth_head'], mislas['recipe']['smooth_tail']) == tuple(CANDIDATES[best])
    for r in records:
        assert 0 <= r['val_top1'] <= 1 and 0 <= r['val_ece'] <= 1 and r['val_nll'] > 0
    assert mislas['train_time_s'] >= sum(r['train_time_s'] for r in records) - 0.2  # every candidate's time
    log = (selected / 'train.log').read_text()
    assert sum(f'stage 2 smoothing candidate {i}/3 (smooth_head' in log for i in (1, 2, 3)) == 3
    assert f'stage 2 smoothing: chose smooth_head {CANDIDATES[best][0]:g}, smooth_tail' in log
    assert sorted(p.name for p in (selected / 'checkpoints').iterdir() if p.is_dir()) == \
        ['stage2-candidate0', 'stage2-candidate1', 'stage2-candidate2']
    card = (selected / 'stage2' / 'README.md').read_text()
    assert 'chosen on the validation split by the lowest NLL' in card
    assert f'{records[best]["val_nll"]:.4f}' in card


@pytest.mark.slow
def test_selection_scores_on_the_validation_split_not_the_test_split(selected, config_file, stage1):
    """The recorded numbers of the kept candidate are those of the saved model evaluated directly on the run's
    validation images (held out of the training split), not on its test split."""
    from mislas_timm import evaluate, load_model
    from mislas_timm.training import load_data

    cfg = cli_config(*stage2_args(config_file, stage1, selected / 'x'), *SELECT)
    data = load_data(cfg)
    selection = selection_of(selected)['stage2_selection']
    kept = selection['candidates'][selection['chosen']['index']]
    model = load_model(str(selected / 'stage2'))
    val = evaluate(model, data.val, split='validation', rank_split=cfg.groups.rank_split)
    assert selection['num_samples'] == len(data.val) == val['num_samples'] == 80
    assert kept['val_top1'] == val['top1']
    assert_close_f32(kept['val_nll'], val['nll'], what='val NLL')
    assert_close_f32(kept['val_ece'], val['ece'], what='val ECE')
    test = json.loads((selected / 'stage2' / 'metrics.json').read_text())
    assert test['num_samples'] == len(data.test) == 40 and test['split'] == 'test'
    assert abs(test['nll'] - kept['val_nll']) > 1e-4  # two different splits


@pytest.mark.slow
def test_a_candidate_trains_exactly_as_stage2_with_that_smoothing(selected, config_file, stage1, tmp_path):
    """candidates null (the paper presets' path): smooth_head / smooth_tail directly give the same weights as
    the same pair kept by a selection, although two other candidates trained before it."""
    selection = selection_of(selected)['stage2_selection']
    assert selection['chosen']['index'] == len(CANDIDATES) - 1  # trained last (see CANDIDATES)
    head, tail = CANDIDATES[-1]
    out = tmp_path / 'direct'
    train(*stage2_args(config_file, stage1, out), '--set', f'stage2.smooth_head={head}', '--set',
          f'stage2.smooth_tail={tail}')
    direct = selection_of(out)
    assert 'stage2_selection' not in direct and (out / 'checkpoints' / 'stage2').is_dir()
    weights_equal(out, selected)


@pytest.mark.slow
def test_a_stopped_selection_resumes_to_the_same_result(selected, config_file, stage1, tmp_path, capsys):
    """Killed after the first epoch of the second candidate: a resume restores the first candidate (no epoch
    of it trained again), continues the second from its checkpoint, trains the third, and keeps what the
    uninterrupted selection kept."""
    from mislas_timm.train import main
    from mislas_timm.training import check_resume_settings, load_data

    out = tmp_path / 'stopped'
    args = [*stage2_args(config_file, stage1, out), *SELECT]
    killed = train(*args, script=KILL_SCRIPT, env=dict(ENV, DIE_CHECKPOINT='stage2-candidate1', DIE_EPOCH='0'),
                   check=False)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (out / 'stage2').exists() and not (out / 'checkpoints' / 'stage2').exists()
    # Only candidate checkpoints: the run is still found (refused without --resume, one line, before any work).
    assert main([*map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'already holds stage 2' in err and '--resume' in err, err
    train(*args, '--resume')
    log = (out / 'train.log').read_text()
    assert 'stage2-candidate0: resumed after epoch 2' in log and 'stage2-candidate1: resumed after epoch 1' in log
    assert 'stage2-candidate2: resumed' not in log
    weights_equal(out, selected)
    ours, reference = selection_of(out)['stage2_selection'], selection_of(selected)['stage2_selection']
    assert ours['chosen'] == reference['chosen']
    for a, b in zip(ours['candidates'], reference['candidates']):
        assert a['val_top1'] == b['val_top1']
        assert_close_f32(a['val_nll'], b['val_nll'], what='val NLL')
    # A resume of the finished selection takes the candidates (not the chosen pair) as its setting ...
    cfg = cli_config(*args)
    data = load_data(cfg)
    check_resume_settings(cfg, data.meta, out, ['2'])
    # ... and refuses other candidates.
    other = cli_config(*stage2_args(config_file, stage1, out), '--set', 'stage2.smoothing_candidates=[[0.1, 0]]')
    with pytest.raises(ConfigError, match='stage2.smoothing_candidates'):
        check_resume_settings(other, data.meta, out, ['2'])
