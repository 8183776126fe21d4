"""train.py end to end on tiny synthetic data: both stages, resume, 2 processes, bf16, bad input."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mislas_timm
from mislas_timm.metrics import REPORT_KEYS
from .conftest import encode_image
from .tolerances import assert_close_f32

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')


def train(*args, check=True, timeout=600):
    result = subprocess.run([sys.executable, str(ROOT / 'train.py'), *map(str, args)], capture_output=True,
                            text=True, env=ENV, cwd=ROOT, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, tiny_config_file):
    out = tmp_path_factory.mktemp('run') / 'out'
    train('--config', tiny_config_file, '--output-dir', out)
    return out


def test_run_folder_layout(full_run):
    assert (full_run / 'train.log').is_file() and (full_run / 'checkpoints').is_dir()
    for stage in (1, 2):
        folder = full_run / f'stage{stage}'
        assert sorted(p.name for p in folder.iterdir()) == sorted(mislas_timm.hub.HUB_FILES)
        metrics = json.loads((folder / 'metrics.json').read_text())
        assert set(REPORT_KEYS) <= set(metrics)  # the contract's keys; new ones may be added
        assert metrics['num_samples'] == 40 and 0 <= metrics['top1'] <= 1 and 0 <= metrics['ece'] <= 1
        config = json.loads((folder / 'config.json').read_text())
        assert config['label_names'] == ['red', 'green', 'blue', 'gray']
        m = config['mislas']
        # The head class keeps all 60 images in the long-tail view, so its 20 validation images come out of them.
        assert m['class_counts'] == [40, 27, 12, 6] and m['imb_factor'] == 10 and m['data_seed'] == 0
        assert m['val_counts'] == [20, 20, 20, 20] and m['num_val'] == 80 and len(m['val_sha256']) == 64
        assert m['stage'] == stage and len(m['split_sha256']) == 64 and m['rank_split'] == [1, 3]
        assert metrics['class_counts'] == [40, 27, 12, 6]
    log = (full_run / 'train.log').read_text()
    assert 'stage1 epoch 2/2' in log and 'stage2 epoch 2/2' in log
    stage2 = json.loads((full_run / 'stage2' / 'config.json').read_text())['mislas']
    assert stage2['stage1']['source'] == str(full_run / 'stage1') and 'train.py' in stage2['stage1']['command']
    assert stage2['recipe']['head'] == 'mislas' and stage2['stage1']['recipe']['mixup_alpha'] == 1.0
    card = (full_run / 'stage2' / 'README.md').read_text()
    assert '# stage 1\n' in card and '# stage 2\n' in card


def test_stage2_is_a_plain_timm_model(full_run):
    import timm
    model = timm.create_model(f'local-dir:{full_run / "stage2"}', pretrained=True).eval()
    assert isinstance(model.get_classifier(), torch.nn.Linear)
    ref = mislas_timm.load_model(str(full_run / 'stage2'))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), ref(x))
    # Stage 2 changed only the classifier (shift-BN on: and the BN running statistics).
    s1 = load_file(full_run / 'stage1' / 'model.safetensors')
    s2 = load_file(full_run / 'stage2' / 'model.safetensors')
    changed = {k for k in s1 if not torch.equal(s1[k], s2[k])}
    assert {'fc.weight', 'fc.bias'} <= changed
    assert all(k.startswith('fc.') or 'running_' in k or 'num_batches' in k for k in changed)
    assert any('running_mean' in k for k in changed)


def test_evaluator_reproduces_stage_metrics(full_run, tiny_dataset_dir, tmp_path):
    result = subprocess.run([sys.executable, '-m', 'mislas_timm.evaluate', str(full_run / 'stage2'), '--dataset',
                             str(tiny_dataset_dir), '--out', str(tmp_path)], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / 'metrics.json').read_text())
    saved = json.loads((full_run / 'stage2' / 'metrics.json').read_text())
    for key in ('top1', 'ece', 'nll', 'brier', 'head_top1', 'few_top1'):
        assert_close_f32(again[key], saved[key], what=key)  # NLL can be ~20: relative to the value
    assert (tmp_path / 'reliability.png').is_file()


RESUME_SCRIPT = textwrap.dedent('''
    import os, sys
    import mislas_timm.training as t
    original = t.Checkpointer.save
    def save_then_die(self, epoch, *args):
        original(self, epoch, *args)
        if self.stage == os.environ["DIE_STAGE"] and epoch == int(os.environ["DIE_EPOCH"]):
            os._exit(137)  # as abrupt as SIGKILL: no cleanup, no atexit
    t.Checkpointer.save = save_then_die
    sys.argv = ["train.py"] + sys.argv[1:]
    import runpy
    runpy.run_path(os.path.join(os.environ["PYTHONPATH"], "train.py"), run_name="__main__")
''')


@pytest.mark.parametrize('die_stage,die_epoch', [('stage1', 0), ('stage2', 0)])
def test_resume_after_kill_matches_uninterrupted(full_run, tiny_config_file, tmp_path, die_stage, die_epoch):
    out = tmp_path / 'killed'
    env = dict(ENV, DIE_STAGE=die_stage, DIE_EPOCH=str(die_epoch))
    killed = subprocess.run([sys.executable, '-c', RESUME_SCRIPT, '--config', str(tiny_config_file),
                             '--output-dir', str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (out / 'stage2' / 'model.safetensors').exists()
    refused = train('--config', tiny_config_file, '--output-dir', out, check=False)
    assert refused.returncode == 2 and '--resume' in refused.stderr
    train('--config', tiny_config_file, '--output-dir', out, '--resume')
    log = (out / 'train.log').read_text()
    assert f'{die_stage}: resumed after epoch {die_epoch + 1}' in log
    assert_same_weights(out, full_run)


def assert_same_weights(run, reference):
    for stage in ('stage1', 'stage2'):
        a = load_file(reference / stage / 'model.safetensors')
        b = load_file(run / stage / 'model.safetensors')
        assert a.keys() == b.keys()
        for k in a:
            assert_close_f32(b[k], a[k], ulps=8, what=f'{stage} {k}')


def test_resume_after_a_kill_inside_the_checkpoint_rotation(full_run, tiny_config_file, tmp_path):
    """Killed between the renames of Checkpointer.save: the newest complete state is in .stage1.tmp, no
    stage1 folder, and a half-deleted .stage1.old. The run is still found, and resumes from that state."""
    out = tmp_path / 'rotating'
    env = dict(ENV, DIE_STAGE='stage1', DIE_EPOCH='0')
    killed = subprocess.run([sys.executable, '-c', RESUME_SCRIPT, '--config', str(tiny_config_file),
                             '--output-dir', str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert killed.returncode == 137, killed.stderr[-2000:]
    checkpoints = out / 'checkpoints'
    (checkpoints / 'stage1').rename(checkpoints / '.stage1.tmp')
    (checkpoints / '.stage1.old').mkdir()
    (checkpoints / '.stage1.old' / 'optimizer.bin').write_bytes(b'half deleted')
    refused = train('--config', tiny_config_file, '--output-dir', out, check=False)
    assert refused.returncode == 2 and '--resume' in refused.stderr
    # The checkpoint's weight names depend on torch.compile: a mismatched resume stops before any work.
    one_line_error(train('--config', tiny_config_file, '--output-dir', out, '--resume', '--compile', check=False),
                   'started without --compile', 'resume without --compile')
    # So do settings other than those the checkpoint was trained with (the lr may change: see the NaN test).
    one_line_error(train('--config', tiny_config_file, '--output-dir', out, '--resume', '--set',
                         'stage1.mixup_alpha=0', check=False), 'stage1.mixup_alpha is 0.0', 'checkpointed with 1.0')
    assert (checkpoints / '.stage1.tmp' / 'progress.json').is_file()
    train('--config', tiny_config_file, '--output-dir', out, '--resume')
    assert 'stage1: resumed after epoch 1' in (out / 'train.log').read_text()
    assert not (checkpoints / '.stage1.old').exists() and not (checkpoints / '.stage1.tmp').exists()
    assert_same_weights(out, full_run)


def test_checkpoint_recovery_takes_the_newest_complete_state(tmp_path):
    from mislas_timm.training import checkpoint_exists, recover_checkpoint

    def state(name, epoch=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / 'model.safetensors').write_text(name)
        if epoch is not None:
            (folder / 'progress.json').write_text(json.dumps({'stage': 'stage2', 'epoch': epoch}))

    assert not checkpoint_exists(tmp_path, 'stage2') and recover_checkpoint(tmp_path, 'stage2') is None
    state('.stage2.tmp')  # killed inside save_state: incomplete, not a run
    assert not checkpoint_exists(tmp_path, 'stage2')
    state('stage2', 4)
    state('.stage2.old', 3)
    assert recover_checkpoint(tmp_path, 'stage2') == tmp_path / 'stage2'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['stage2']
    assert (tmp_path / 'stage2' / 'model.safetensors').read_text() == 'stage2'
    (tmp_path / 'stage2').rename(tmp_path / '.stage2.old')
    state('.stage2.tmp', 5)  # killed after stage2 -> .old, before .tmp -> stage2
    assert checkpoint_exists(tmp_path, 'stage2')
    recover_checkpoint(tmp_path, 'stage2')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['stage2']
    assert json.loads((tmp_path / 'stage2' / 'progress.json').read_text())['epoch'] == 5


@pytest.mark.parametrize('pinned,choices,needles', [
    ({'num_processes': 2}, {}, ['2 process(es)', 'this start has 1', '--num_processes 2']),
    ({'compile': True}, {}, ['started with --compile', 'resume with --compile']),
    ({'mixed_precision': 'fp16'}, {}, ['started in fp16', 'resolved no', '--mixed-precision fp16']),
    ({'mixed_precision': 'bf16'}, {'mixed_precision': 'fp16'}, ['started in bf16', '--mixed-precision bf16']),
])
def test_resume_refuses_choices_its_checkpoint_cannot_load(pinned, choices, needles):
    from mislas_timm.config import ConfigError
    from mislas_timm.runtime import RuntimeChoices
    from mislas_timm.training import check_resumable
    started = RuntimeChoices('no', True, False, True, 'cpu', num_processes=1)
    check_resumable(started.to_dict(), started)  # the same choices (bf16 <-> no may also change: a logged note)
    check_resumable({**started.to_dict(), 'mixed_precision': 'bf16'}, started)
    check_resumable({'mixed_precision': 'no'}, started)  # runs pinned before num_processes was recorded
    with pytest.raises(ConfigError) as err:
        check_resumable({**started.to_dict(), **pinned}, RuntimeChoices(**{**started.to_dict(), **choices}))
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_two_processes_count_every_sample_once(full_run, tiny_config_file, tiny_dataset_dir, tmp_path):
    """accelerate launch with 2 gloo processes: the same metrics as one process on the same weights."""
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(ROOT / 'train.py'),
           '--config', str(tiny_config_file), '--output-dir', str(out), '--stage', '2',
           '--init', str(full_run / 'stage1'), '--stage2-epochs', '1', '--max-eval-samples', '39']
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / 'train.log').read_text()
    assert '2 process(es)' in log
    ddp = json.loads((out / 'stage2' / 'metrics.json').read_text())
    assert ddp['num_samples'] == 39  # 39 over 2 ranks: the padded duplicate is dropped
    import datasets
    test = datasets.load_from_disk(str(tiny_dataset_dir))['test'].select(range(39))
    model = mislas_timm.load_model(str(out / 'stage2'))
    single = mislas_timm.evaluate(model, test)
    for key in ('top1', 'top5', 'ece', 'mce', 'nll', 'brier', 'per_class_top1', 'head_top1', 'tail_top1'):
        assert_close_f32(single[key], ddp[key], what=key)


def test_bf16_step_runs_on_cpu(tiny_config_file, tiny_dataset_dir, tmp_path):
    out = tmp_path / 'bf16'
    train('--config', tiny_config_file, '--output-dir', out, '--stage', '1', '--epochs', '1',
          '--mixed-precision', 'bf16', '--max-train-samples', '40', '--max-eval-samples', '8',
          '--set', 'stage1.lr=0.01')  # a small lr keeps the 1-epoch model short of saturated (NLL finite, not clamped)
    log = (out / 'train.log').read_text()
    assert 'mixed precision bf16' in log and 'stage1 epoch 1/1' in log
    metrics = json.loads((out / 'stage1' / 'metrics.json').read_text())
    assert metrics['num_samples'] == 8 and metrics['nll'] == metrics['nll']  # finite, not NaN
    # The end-of-stage report is measured in fp32 like the standalone evaluator, whatever the run
    # trained in (Accelerate's autocast wrapper must not stay on the returned model's forward).
    result = subprocess.run([sys.executable, '-m', 'mislas_timm.evaluate', str(out / 'stage1'), '--dataset',
                             str(tiny_dataset_dir), '--max-samples', '8', '--out', str(tmp_path / 'eval')],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    for key in ('top1', 'ece', 'nll', 'brier'):
        assert_close_f32(again[key], metrics[key], what=key)


def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert 'Traceback' not in err and err.count('\n') == 0, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input(tiny_config_file, tiny_dataset_dir, full_run, tmp_path):
    out = tmp_path / 'bad'
    one_line_error(train('--preset', 'cifar10-lt-if1000', '--output-dir', out, check=False), 'unknown preset')
    one_line_error(train('--preset', 'cifar10-lt-if100', '--dataset', tmp_path / 'nowhere', '--output-dir', out,
                         check=False), 'does not exist')
    one_line_error(train('--preset', 'cifar10-lt-if100', '--dataset', 'someone/not-cached-anywhere', '--output-dir',
                         out, check=False), 'someone/not-cached-anywhere', 'local')
    one_line_error(train('--preset', 'cifar10-lt-if100', '--dataset', tiny_dataset_dir, '--output-dir', out,
                         check=False), 'has 4 classes', 'expects 10')
    one_line_error(train('--config', tiny_config_file, '--image-column', 'picture', '--output-dir', out,
                         check=False), "'picture'", '--image-column')
    one_line_error(train('--config', tiny_config_file, '--set', 'stage2.shfit_bn=true', '--output-dir', out,
                         check=False), 'shfit_bn')
    assert not out.exists() or not any((out / s).exists() for s in ('stage1', 'stage2'))


def test_init_with_other_class_count_is_refused(tiny_config_file, tmp_path):
    from .hub_fixtures import make_hub_folder
    ten_classes = make_hub_folder(tmp_path / 'ten')
    err = one_line_error(train('--config', tiny_config_file, '--stage', '2', '--init', ten_classes,
                               '--output-dir', tmp_path / 'out', check=False), '10 classes', 'has 4')
    assert 'init' in err
    assert not (tmp_path / 'out' / 'stage2').exists()


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_config_file, tmp_path):
    out = tmp_path / 'nan'
    env = dict(ENV, DIE_STAGE='stage1', DIE_EPOCH='0')
    first = subprocess.run([sys.executable, '-c', RESUME_SCRIPT, '--config', str(tiny_config_file), '--output-dir',
                            str(out), '--stage', '1', '--epochs', '3'], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=600)
    assert first.returncode == 137, first.stderr[-2000:]
    checkpoint = out / 'checkpoints' / 'stage1'
    weights = (checkpoint / 'model.safetensors').read_bytes()
    err = one_line_error(train('--config', tiny_config_file, '--output-dir', out, '--stage', '1', '--epochs', '3',
                               '--resume', '--set', 'stage1.lr=1e30', check=False), 'loss is', 'epoch 1 step')
    assert f'Last good checkpoint: {checkpoint} (after epoch 0)' in err
    assert json.loads((checkpoint / 'progress.json').read_text())['epoch'] == 0
    assert (checkpoint / 'model.safetensors').read_bytes() == weights
    assert not (out / 'stage1').exists()


def test_decode_once_fast_path_trains_both_stages(tiny_config_file, tmp_path):
    out = tmp_path / 'fast'
    train('--config', tiny_config_file, '--output-dir', out, '--epochs', '1', '--stage2-epochs', '1',
          '--set', 'data.decode_once=true')
    for stage in ('stage1', 'stage2'):
        assert json.loads((out / stage / 'metrics.json').read_text())['num_samples'] == 40
    # Images of another size than the model input are resized once at decode time (16x16 -> 32x32 here).
    train('--config', tiny_config_file, '--output-dir', tmp_path / 'resized', '--stage', '1', '--epochs', '1',
          '--set', 'data.decode_once=true', '--set', 'data.input_size=[3, 32, 32]')
    assert 'decode-once: resized 85 of 85 training images to the model input 32x32' in \
        (tmp_path / 'resized' / 'train.log').read_text()
    one_line_error(train('--config', tiny_config_file, '--output-dir', tmp_path / 'bad', '--stage', '1',
                         '--set', 'data.decode_once=true', '--set', 'data.train_transform=imagenet', check=False),
                   'decode_once', 'imagenet')


def test_split_lists_as_for_the_large_sets(tiny_config_file, tmp_path):
    from PIL import Image
    root = tmp_path / 'root'
    for split, n in (('train', 6), ('test', 2)):
        lines = []
        for c in range(4):
            for i in range(n if c < 2 else n // 2):
                path = root / split / f'c{c}' / f'{i}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new('RGB', (16, 16), (60 * c, 255 - 60 * c, 30)).save(path)
                lines.append(f'{split}/c{c}/{i}.png {c}')
        (tmp_path / f'{split}.txt').write_text('\n'.join(lines))
    out = tmp_path / 'lists'
    train('--config', tiny_config_file, '--output-dir', out, '--data-root', root, '--train-list', tmp_path / 'train.txt',
          '--test-list', tmp_path / 'test.txt', '--epochs', '1', '--stage2-epochs', '1', '--set', 'longtail=null',
          '--set', 'dataset.image_column=image')
    config = json.loads((out / 'stage2' / 'config.json').read_text())
    assert config['mislas']['class_counts'] == [6, 6, 3, 3] and config['mislas']['imb_factor'] is None
    assert json.loads((out / 'stage2' / 'metrics.json').read_text())['num_samples'] == 6


def test_divergence_rule_both_sides():
    from mislas_timm.training import loss_problem
    # Healthy losses: a uniform guess (log 10 = 2.3), an early mixup step, a bad but recovering step.
    for healthy in (0.05, 2.3, 4.0, 30.0, 100.0):
        assert loss_problem(healthy, 10) is None, healthy
    assert loss_problem(6_277_678_802.0, 10).startswith('loss 6.278e+09 exceeds 115')
    assert 'diverged' in loss_problem(200.0, 10)
    assert loss_problem(200.0, 1000) is None  # the limit grows with log K (345 for 1,000 classes)
    assert loss_problem(float('nan'), 10) == 'loss is nan' and loss_problem(float('inf'), 10) == 'loss is inf'


def test_divergence_is_judged_against_the_stage_s_own_start():
    from mislas_timm.training import start_problem, loss_problem
    # A stage that starts at 8 (3.5 x log 10, e.g. a stage 2 from an overconfident stage-1 model) may pass
    # 115 on its way down; it has diverged above 50 x its own start.
    assert loss_problem(200.0, 10, start_loss=8.0) is None
    assert loss_problem(401.0, 10, start_loss=8.0) == \
        "loss 401 exceeds 400 (50 x 8, the stage's first loss): training diverged"
    assert loss_problem(200.0, 10, start_loss=1.0).startswith('loss 200 exceeds 115 (50 x log 10')  # log K floor
    # A start above 10 x log K is a broken starting model, named before any step (see test_smoke.py).
    assert start_problem(6.5, 10) is None and start_problem(23.0, 10) is None
    assert start_problem(103.3, 10) == 'starts at loss 103.3, 45 x log 10 (the loss of a uniform guess)'
    assert start_problem(float('nan'), 10) == 'starts at loss nan'


def test_short_stages_end_with_precise_bn_and_record_it(full_run):
    """The tiny stage 1 (2 epochs x 6 steps) re-estimated its BN statistics after its last checkpoint:
    the written model differs from the trained state in those alone, and the recipe says so."""
    written = load_file(full_run / 'stage1' / 'model.safetensors')
    trained = load_file(full_run / 'checkpoints' / 'stage1' / 'model.safetensors')
    assert written.keys() == trained.keys()
    changed = {k for k in written if not torch.equal(written[k], trained[k])}
    assert changed and all(k.endswith(('running_mean', 'running_var')) for k in changed)
    recipe = json.loads((full_run / 'stage1' / 'config.json').read_text())['mislas']['recipe']
    assert recipe['precise_bn_below_steps'] == 200 and recipe['precise_bn_batches'] == 6
    assert 'stage1: 12 steps, under precise_bn_below_steps 200' in (full_run / 'train.log').read_text()
    # Stage 2 (shift-BN on) re-estimated the statistics of its class-balanced stream.
    assert json.loads((full_run / 'stage2' / 'config.json').read_text())['mislas']['recipe']['precise_bn_batches'] > 0


def test_exploding_finite_loss_stops_stage2(full_run, tiny_config_file, tmp_path):
    out = tmp_path / 'diverge'
    err = one_line_error(train('--config', tiny_config_file, '--output-dir', out, '--stage', '2', '--init',
                               full_run / 'stage1', '--set', 'stage2.lr=1e7', check=False),
                         'diverged', 'epoch 0 step', 'Lower the lr (--set stage2.lr=...)')
    assert 'Last good checkpoint: none yet' in err
    assert not (out / 'stage2').exists() and not (out / 'checkpoints' / 'stage2').exists()
    # The healthy runs of this suite never trip the rule.
    assert 'diverged' not in (full_run / 'train.log').read_text()


def test_resume_without_a_run_says_it_starts_a_new_one(tiny_config_file, tmp_path):
    out = tmp_path / 'fresh'
    train('--config', tiny_config_file, '--output-dir', out, '--stage', '1', '--epochs', '1', '--resume',
          '--max-eval-samples', '8')
    assert f'no run in {out} to resume: starting a new one' in (out / 'train.log').read_text()
    assert json.loads((out / 'checkpoints' / 'runtime.json').read_text())['mixed_precision'] == 'no'


def test_progress_lines_without_a_terminal(caplog):
    import logging
    from mislas_timm.training import StageProgress
    progress = StageProgress('stage1', epochs=200, steps_per_epoch=97, start_epoch=10, is_main=True, every_s=0.0,
                             tty=False)
    progress.start_epoch(10)
    with caplog.at_level(logging.INFO, logger='mislas_timm.train'):
        logging.getLogger('mislas_timm.train').propagate = True
        try:
            for step in range(1, 4):
                progress.step(step, 1.25, 0.1, 128)
        finally:
            logging.getLogger('mislas_timm.train').propagate = False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[-1].startswith('stage1 epoch 11/200 step 3/97: loss 1.2500, lr 0.1, ') and 'images/s' in lines[-1]
    assert 'stage ETA' in lines[-1] and '(ends ~' in lines[-1]
    assert progress.bar is None  # no tqdm bar without a terminal
    # The ETA covers what is left of the stage: 190 epochs x 97 steps minus the 3 done.
    assert progress.steps_left_at_start - progress.steps_done == 190 * 97 - 3


def test_trained_model_records_its_own_tag(full_run):
    for stage in (1, 2):
        cfg = json.loads((full_run / f'stage{stage}' / 'config.json').read_text())['pretrained_cfg']
        assert cfg['tag'] == f'tiny_stage{stage}' and 'hf_hub_id' not in cfg  # not the zoo weights' tag


def test_zoo_build_publishes_without_machine_paths(full_run, tiny_dataset_dir, tmp_path):
    from mislas_timm import zoo
    runs = tmp_path / 'runs'
    shutil.copytree(full_run, runs / 'tiny-mixup')
    entry = zoo.ZooEntry('resnet20_cifar.tiny_mislas', 'a tiny test model', 'tiny-mixup/stage2')
    [folder] = zoo.build(str(runs), str(tiny_dataset_dir), zoo_dir=tmp_path / 'zoo', entries=[entry])
    texts = {name: (folder / name).read_text() for name in ('README.md', 'config.json', 'metrics.json')}
    for name, text in texts.items():
        for machine_path in (str(tmp_path), str(full_run), str(tiny_dataset_dir), '/tmp/', 'pytest-of'):
            assert machine_path not in text, (name, machine_path)
    config = json.loads(texts['config.json'])
    m = config['mislas']
    # The tiny data set stores PNG: the card says the pixels are the original ones, and says how it knows.
    assert m['dataset'] == 'uoft-cs/cifar10' and m['image_encoding'] == 'PNG (lossless)'
    assert 'original pixels (PNG (lossless))' in m['data_note'] and 'original pixels' in texts['README.md']
    assert 'one long-tail split (data seed 0)' in texts['README.md']  # the standard limitations
    assert m['command'].startswith('python train.py --config tiny.yaml ') and '--output-dir runs/out' in m['command']
    assert m['command'].endswith('--mixed-precision no')  # the pinned choice, stated for a rerun
    assert m['stage1']['command'].startswith('python train.py') and m['stage1']['source'] == 'runs/out/stage1'
    assert config['pretrained_cfg']['tag'] == 'tiny_mislas'  # (timm's save_for_hf leaves the source out)
    card = texts['README.md']
    assert 'hf-hub:mislas-timm/resnet20_cifar.tiny_mislas' in card
    assert '| stage 1 |' in card and '| stage 2 |' in card and 'fp32' in card and 'wall time' in card
    metrics = json.loads(texts['metrics.json'])
    assert metrics['dataset'] == 'uoft-cs/cifar10' and {'adaptive_ece', 'classwise_ece', 'train_time_s'} <= set(metrics)
    import timm
    x = torch.randn(2, 3, 16, 16)
    published = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert torch.equal(published(x), mislas_timm.load_model(str(full_run / 'stage2'))(x))


def jpeg_copy_of(dataset_dir: Path, out: Path) -> Path:
    """``dataset_dir``'s splits with every image re-encoded as JPEG quality 75, as a save_to_disk folder
    (loading it prints no "Generating split" progress, so a CLI's stderr holds only its own message)."""
    import datasets

    splits = {}
    for split, ds in datasets.load_from_disk(str(dataset_dir)).items():
        jpeg = [{'bytes': encode_image(image, 'JPEG', quality=75), 'path': None} for image in ds['img']]
        splits[split] = datasets.Dataset.from_dict({'img': jpeg, 'label': ds['label']}, features=ds.features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


def test_zoo_build_refuses_a_copy_encoded_unlike_the_training_data(full_run, tiny_dataset_dir, tmp_path):
    """A model trained on PNG images is not re-measured on a JPEG copy (nor the reverse): one line, nothing written."""
    from mislas_timm import zoo

    jpeg_copy = jpeg_copy_of(tiny_dataset_dir, tmp_path / 'tiny-jpeg')
    runs = tmp_path / 'runs'
    shutil.copytree(full_run, runs / 'tiny-mixup')
    entry = zoo.ZooEntry('resnet20_cifar.tiny_mislas', 'a tiny test model', 'tiny-mixup/stage2')
    with pytest.raises(zoo.ZooError, match=r'trained on images stored as PNG \(lossless\) but .* holds JPEG quality 75'):
        zoo.build(str(runs), str(jpeg_copy), zoo_dir=tmp_path / 'zoo', entries=[entry])
    assert not (tmp_path / 'zoo').exists()


def test_zoo_verify_refuses_a_copy_encoded_unlike_the_shipped_models(tiny_dataset_dir, tmp_path):
    """--verify on a copy stored unlike the shipped models' training images: one line before any evaluation,
    instead of a MISMATCH for a reason that is not the model's."""
    from mislas_timm import zoo

    recorded = {json.loads((e.folder / 'config.json').read_text())['mislas'].get('image_encoding')
                for e in zoo.shipped()}
    assert len(recorded) == 1, recorded  # one zoo, one copy of CIFAR-10
    other = tiny_dataset_dir if 'JPEG' in recorded.pop() else jpeg_copy_of(tiny_dataset_dir, tmp_path / 'tiny-jpeg')
    result = subprocess.run([sys.executable, '-m', 'mislas_timm.zoo', '--verify', str(other)], capture_output=True,
                            text=True, env=ENV, cwd=ROOT, timeout=300)
    one_line_error(result, 'was trained on images stored as', 'pass the copy it was trained on')


@pytest.mark.parametrize('args,needles', [
    (['--set', 'stage2.head=foo'], ['stage2.head', "'foo'", 'mislas, lws, crt']),
    (['--set', 'stage1.lr=abc'], ['stage1.lr', "'abc'", 'a number']),
    (['--epochs', '-3'], ['stage1.epochs', '>= 1']),
    (['--set', 'stage2.loss=focal'], ['stage2.loss', 'las, ce']),
    (['--set', 'longtail.imb_factor=100'], ['imb_factor=100', 'leaves classes [3] with 0 images']),
    # (--init with --stage 1 / all now names the weights stage 1 fine-tunes: see tests/test_init.py)
    (['--stage', '1', '--init', 'somewhere'], ['--init', "unknown model source 'somewhere'"]),
    (['--stage', '2', '--init', 'no/such/folder'], ['--init', "unknown model source 'no/such/folder'"]),
    (['--stage', '2'], ['--stage 2 needs a stage-1 model', '--init SOURCE']),
    (['--set', 'data.train_transform_kwargs.paddding=8'], ['train_transform_kwargs.paddding', "did you mean 'padding'"]),
    # fp16 would silently run in fp32 on a CPU while the run records fp16
    (['--cpu', '--mixed-precision', 'fp16'], ['--mixed-precision fp16', 'needs a GPU', 'use bf16 or no']),
    (['--cpu', '--set', 'runtime.mixed_precision=fp16'], ['runtime.mixed_precision', 'needs a GPU']),
])
def test_bad_configuration_stops_before_any_work(tiny_config_file, tmp_path, args, needles):
    out = tmp_path / 'bad'
    one_line_error(train('--config', tiny_config_file, '--output-dir', out, *args, check=False), *needles)
    # Nothing trained or checkpointed: at most the log of the failed start.
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == ['train.log']


def test_typo_in_a_config_file_is_refused(tiny_config_file, tmp_path):
    typo = tmp_path / 'typo.yaml'
    typo.write_text(tiny_config_file.read_text() + '\nsmoothing: {smoth_head: 0.2}\n')
    one_line_error(train('--config', typo, '--output-dir', tmp_path / 'out', check=False),
                   'unknown config key smoothing')
    typo.write_text(tiny_config_file.read_text().replace('stage2: {', 'stage2: {smoth_head: 0.2, '))
    one_line_error(train('--config', typo, '--output-dir', tmp_path / 'out', check=False),
                   'unknown config key stage2.smoth_head', "did you mean 'smooth_head'")
    assert not (tmp_path / 'out').exists()


def test_stage_recipe_keeps_what_a_resume_must_not_change():
    from mislas_timm.config import ConfigError, apply_overrides, load_preset, parse_config
    from mislas_timm.training import check_same_recipe, stage_recipe
    raw = load_preset('cifar10-lt-if100')
    meta = {'split_sha256': 'abc', 'image_encoding': 'PNG (lossless)'}
    started = stage_recipe(parse_config(raw), 'stage1', meta)
    assert started['stage1.epochs'] == 200 and started['longtail.imb_factor'] == 100
    assert started['data.mean'] == list(parse_config(raw).data.mean)  # as progress.json returns it
    assert not any(k.startswith(('stage2.', 'runtime.')) or k in ('stage1.lr', 'dataset.source') for k in started)
    stage2 = stage_recipe(parse_config(raw), 'stage2', meta)
    assert 'stage2.lr' not in stage2 and stage2['stage2.lr_factor'] == parse_config(raw).stage2.lr_factor
    for allowed in (['stage1.lr=0.01'], ['dataset.source=/elsewhere/cifar10'], ['stage2.epochs=3'],
                    ['runtime.mixed_precision=no']):
        check_same_recipe(started, stage_recipe(parse_config(apply_overrides(raw, allowed)), 'stage1', meta), 'stage1')
    with pytest.raises(ConfigError, match='stage1.epochs is 100 but stage1 was checkpointed with 200'):
        check_same_recipe(started, stage_recipe(parse_config(apply_overrides(raw, ['stage1.epochs=100'])), 'stage1',
                                                meta), 'stage1')
    with pytest.raises(ConfigError, match="split_sha256 is 'other'"):  # e.g. another --max-train-samples
        check_same_recipe(started, stage_recipe(parse_config(raw), 'stage1', dict(meta, split_sha256='other')),
                          'stage1')
    check_same_recipe(None, started, 'stage1')  # checkpoints from before the recipe was recorded
    # a checkpoint whose older code did not record stage2.lr_factor resumes; what it did record is still held
    older = {k: v for k, v in stage2.items() if k != 'stage2.lr_factor'}
    check_same_recipe(older, stage_recipe(parse_config(raw), 'stage2', meta), 'stage2')
    with pytest.raises(ConfigError, match='stage2.epochs is 3 but stage2 was checkpointed with 10'):
        check_same_recipe(older, stage_recipe(parse_config(apply_overrides(raw, ['stage2.epochs=3'])), 'stage2',
                                              meta), 'stage2')
    # The weights a run started from (--init) shape every stage: source and sha256, both values named.
    def from_init(sha256):
        overrides = ['model.init=a/run/stage1', f'model.init_sha256={sha256}']
        return stage_recipe(parse_config(apply_overrides(raw, overrides)), 'stage1', meta)

    started, other = from_init('a' * 64), from_init('b' * 64)
    assert started['model.init'] == 'a/run/stage1' and started['model.init_sha256'] == 'a' * 64
    with pytest.raises(ConfigError) as err:
        check_same_recipe(started, other, 'stage1')
    assert str(err.value).startswith("--resume: model.init_sha256 is 'bbbbbbbbbbbb...' but stage1 was checkpointed "
                                     "with 'aaaaaaaaaaaa...'; resume with the settings")
    # the same weights named another way (./a/run/stage1, an absolute path, a zoo tag) are the same start;
    # without a recorded sha256 the name is all there is to compare
    respelled = stage_recipe(parse_config(apply_overrides(raw, ['model.init=./a/run/stage1/',
                                                                f'model.init_sha256={"a" * 64}'])), 'stage1', meta)
    check_same_recipe(started, respelled, 'stage1')
    unhashed = {k: v for k, v in started.items() if k != 'model.init_sha256'}
    with pytest.raises(ConfigError, match="model.init is './a/run/stage1/' but stage1 was checkpointed with "
                                          "'a/run/stage1'"):
        check_same_recipe(unhashed, respelled, 'stage1')


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (train.log aside: a refused start appends its command)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and p.name != 'train.log'}


@pytest.fixture
def other_recipe(tiny_config_file, tmp_path) -> Path:
    """The tiny recipe with another long-tail view (as the IF50 preset is to IF100) and another stage-2 lr_factor."""
    path = tmp_path / 'tiny-if5.yaml'
    path.write_text(tiny_config_file.read_text().replace('imb_factor: 10', 'imb_factor: 5')
                    .replace('stage2: {', 'stage2: {lr_factor: 0.2, '))
    return path


def test_a_finished_run_resumed_with_other_settings_is_refused(full_run, other_recipe, tiny_config_file, tmp_path):
    out = tmp_path / 'finished'
    shutil.copytree(full_run, out)
    before = snapshot(out)
    err = one_line_error(train('--config', other_recipe, '--output-dir', out, '--resume', check=False),
                         'longtail.imb_factor is 5.0 but stage1 was trained with 10.0',
                         'stage2.lr_factor is 0.2 but stage2 was trained with 0.5', "split_sha256 is '",
                         'start a new --output-dir')
    assert err.index('longtail.imb_factor') < err.index('split_sha256') < err.index('stage2.lr_factor')
    assert snapshot(out) == before  # nothing trained or overwritten
    # The same settings: the finished run is reported done, as before.
    train('--config', tiny_config_file, '--output-dir', out, '--resume')
    assert 'stage 2 already complete' in (out / 'train.log').read_text() and snapshot(out) == before


def test_stage2_is_not_trained_on_a_stage1_of_another_recipe(full_run, other_recipe, tiny_config_file, tmp_path):
    """Stage 1 finished, stage 2 not started: neither `all` nor `--stage 2` may train an IF5 stage 2 on the IF10
    stage 1."""
    out = tmp_path / 'half'
    shutil.copytree(full_run, out, ignore=lambda folder, names: [n for n in names if n == 'stage2'])
    assert not (out / 'stage2').exists() and not (out / 'checkpoints' / 'stage2').exists()
    before = snapshot(out)
    for stage in ('all', '2'):
        one_line_error(train('--config', other_recipe, '--output-dir', out, '--resume', '--stage', stage, check=False),
                       'longtail.imb_factor is 5.0 but stage1 was trained with 10.0')
        assert snapshot(out) == before and not (out / 'stage2').exists()


def test_resume_check_reads_a_finished_stage_without_its_checkpoint(full_run, other_recipe, tiny_config_file,
                                                                   tmp_path):
    """Checkpoints deleted to save space: the finished stages' config.json still tells how they were trained."""
    from mislas_timm.config import ConfigError, load_config_file, parse_config
    from mislas_timm.training import check_resume_settings

    out = tmp_path / 'no-checkpoints'
    shutil.copytree(full_run, out, ignore=lambda folder, names: [n for n in names if n == 'checkpoints'])
    meta = json.loads((full_run / 'stage1' / 'config.json').read_text())['mislas']
    same = parse_config(load_config_file(str(tiny_config_file)))
    check_resume_settings(same, meta, out, ('1', '2'))
    other = parse_config(load_config_file(str(other_recipe)))
    with pytest.raises(ConfigError) as err:
        check_resume_settings(other, dict(meta, split_sha256='0' * 64), out, ('1', '2'))
    message = str(err.value)
    assert 'longtail.imb_factor is 5.0 but stage1 was trained with 10;' in message
    assert f"split_sha256 is '000000000000...' but stage1 was trained with '{meta['split_sha256'][:12]}...'" in message
    assert 'stage2.lr_factor is 0.2 but stage2 was trained with 0.5' in message


def test_output_dir_that_cannot_hold_a_run(tiny_config_file, tmp_path):
    """An existing file, a path under a file, a folder that cannot be written in: one line, exit 2, nothing made."""
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('keep me')
    one_line_error(train('--config', tiny_config_file, '--output-dir', a_file, check=False),
                   f'--output-dir {a_file} is a file, not a folder', 'pass a folder path')
    one_line_error(train('--config', tiny_config_file, '--output-dir', a_file / 'run', check=False),
                   f'lies under {a_file}, which is a file')
    assert a_file.read_text() == 'keep me'
    if os.geteuid() == 0:  # root writes through permission bits: take a kernel file system that refuses everyone
        locked, out = Path('/sys'), Path('/sys/mislas-test-run')
    else:
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o555)
        out = locked / 'run'
    one_line_error(train('--config', tiny_config_file, '--output-dir', out, check=False),
                   f'--output-dir {out}: cannot write in {locked}', 'pass a folder you can write to')
    assert not out.exists() and not any(p.name.startswith('.mislas-write-check') for p in locked.iterdir())


# The names other modules, tests, benchmarks and README import from mislas_timm.training (once one module).
FORMER_TRAINING_NAMES = {
    'data': ['TrainData', 'load_data', 'DECODE_CHECK_PIXELS', '_training_view'],
    'model': ['build_model', '_check_arch', '_apply_data_cfg'],
    'checkpoints': ['Checkpointer', 'checkpoint_exists', 'recover_checkpoint', 'stage_recipe', 'check_same_recipe',
                    'check_resume_settings', 'check_resumable', '_stage_done'],
    'progress': ['StageProgress'],
    'loop': ['TrainingError', 'StageSpec', 'lr_multiplier', 'loss_problem', 'start_problem', '_freeze_except',
             '_train_stage', '_stage1', '_stage2'],
    'run': ['run_training', 'check_output_dir', '_resolve_runtime', '_setup_logging'],
}


def test_training_is_a_package_of_small_modules_keeping_the_old_names():
    """mislas_timm.training (data, model, checkpoints, progress, loop, run): each module under 600 lines, every
    former name still importable from the package as the submodule's own object, one log for all of them."""
    import importlib
    import logging

    import mislas_timm.training as training
    folder = Path(training.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob('*.py')}
    assert set(sizes) == {'__init__.py', *(f'{m}.py' for m in FORMER_TRAINING_NAMES)}, sizes
    assert max(sizes.values()) <= 600, sizes
    for module, names in FORMER_TRAINING_NAMES.items():
        sub = importlib.import_module(f'mislas_timm.training.{module}')
        for name in names:
            assert getattr(training, name) is getattr(sub, name), f'{module}.{name}'
        if hasattr(sub, 'logger'):
            assert sub.logger is logging.getLogger('mislas_timm.train'), module  # train.log's lines, as before
    assert set(training.__all__) <= set(dir(training))
