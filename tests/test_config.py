import pytest

from mislas_timm.config import ConfigError, TrainConfig, apply_overrides, list_presets, load_config_file, load_preset, parse_config

PRESETS = ['finetune', 'cifar10-lt-if100', 'cifar10-lt-if50', 'cifar10-lt-if10', 'cifar100-lt-if100', 'cifar100-lt-if50',
           'cifar100-lt-if10', 'imagenet-lt-r50', 'inat2018-r50', 'places-lt-r152', 'cifar10-lt-if100-cpu']

# DESIGN.md section 2, stage-2 table: (IF, eps_1, eps_K, shift-BN, lr_factor)
STAGE2 = {
    'cifar10-lt-if100': (100, 0.3, 0.0, False, 0.5), 'cifar10-lt-if50': (50, 0.2, 0.0, False, 0.2),
    'cifar10-lt-if10': (10, 0.1, 0.0, False, 0.2), 'cifar100-lt-if100': (100, 0.4, 0.1, True, 0.2),
    'cifar100-lt-if50': (50, 0.3, 0.0, True, 0.1), 'cifar100-lt-if10': (10, 0.2, 0.0, True, 0.1),
}


def test_every_paper_setting_has_a_preset():
    assert sorted(list_presets()) == sorted(PRESETS)


@pytest.mark.parametrize('name', sorted(STAGE2))
def test_cifar_presets_match_paper(name):
    cfg = load_preset(name)
    imb, head, tail, shift, factor = STAGE2[name]
    assert cfg['longtail']['imb_factor'] == imb and cfg['longtail']['data_seed'] == 0
    s2 = cfg['stage2']
    assert (s2['smooth_head'], s2['smooth_tail'], s2['shift_bn'], s2['lr_factor']) == (head, tail, shift, factor)
    assert (s2['epochs'], s2['lr'], s2['schedule'], s2['batch_size']) == (10, 0.1, 'cosine', 128)
    s1 = cfg['stage1']
    assert (s1['epochs'], s1['lr'], s1['batch_size'], s1['weight_decay'], s1['mixup_alpha']) == (200, 0.1, 128, 2e-4, 1.0)
    assert s1['milestones'] == [160, 180] and s1['warmup_epochs'] == 5
    assert cfg['model']['arch'] == 'resnet32_cifar'
    c100 = name.startswith('cifar100')
    assert cfg['dataset']['label_column'] == ('fine_label' if c100 else 'label')
    assert cfg['groups']['rank_split'] == ([36, 71] if c100 else [3, 7])


def test_large_presets():
    inet, inat, places = load_preset('imagenet-lt-r50'), load_preset('inat2018-r50'), load_preset('places-lt-r152')
    assert (inet['stage1']['epochs'], inet['stage1']['weight_decay'], inet['stage1']['mixup_alpha']) == (180, 5e-4, 0.2)
    assert (inat['stage1']['epochs'], inat['stage1']['weight_decay']) == (200, 1e-4)
    assert (places['stage1']['epochs'], places['model']['arch']) == (90, 'resnet152_places')
    assert places['model']['trunk_weights'] == 'resnet152.tv_in1k' and places['stage1']['trainable'] == ['extra_block.', 'fc.']
    assert (places['stage2']['smooth_head'], places['stage2']['smooth_tail']) == (0.4, 0.1)
    for cfg in (inet, inat, places):
        assert cfg['stage2']['lr_factor'] == 0.05 and cfg['stage2']['shift_bn'] is True
        assert cfg['stage1']['batch_size'] == 256 and cfg['stage1']['schedule'] == 'cosine'
        assert cfg['longtail'] is None
    assert inet['groups']['rank_split'] == [390, 835]


def test_cpu_preset():
    cfg = load_preset('cifar10-lt-if100-cpu')
    assert cfg['stage1']['epochs'] == 30 and cfg['stage1']['schedule'] == 'cosine'
    assert cfg['stage2'] == load_preset('cifar10-lt-if100')['stage2']


def test_overrides():
    cfg = apply_overrides(load_preset('cifar10-lt-if100'), ['stage2.shift_bn=true', 'groups.rank_split=[2, 5]', 'stage1.lr=1e-3',
                                                           'longtail.n_max=null'])
    typed = parse_config(cfg)
    assert typed.stage2.shift_bn is True and typed.groups.rank_split == [2, 5] and typed.stage1.lr == 1e-3
    assert typed.longtail.n_max is None
    # A key the schema knows may be set even where the preset does not list it (Places' trunk_weights).
    assert parse_config(apply_overrides(cfg, ['model.trunk_weights=resnet18'])).model.trunk_weights == 'resnet18'
    assert parse_config(apply_overrides(cfg, ['model.kwargs.drop_rate=0.1'])).model.kwargs == {'drop_rate': 0.1}
    with pytest.raises(ConfigError, match="no key 'shfit_bn'.*did you mean 'shift_bn'"):
        apply_overrides(cfg, ['stage2.shfit_bn=true'])
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        apply_overrides(cfg, ['stage2.shift_bn'])
    with pytest.raises(ConfigError, match='unknown preset'):
        load_preset('cifar10-lt-if1000')


def test_lr_schedules():
    from mislas_timm.training import lr_multiplier
    step = parse_config(load_preset('cifar10-lt-if100')).stage1
    assert [lr_multiplier(e, step) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == \
        pytest.approx([0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    cos = parse_config(load_preset('cifar10-lt-if100')).stage2
    assert lr_multiplier(0, cos) == 1.0 and lr_multiplier(5, cos) == pytest.approx(0.5)


@pytest.mark.parametrize('name', PRESETS)
def test_every_preset_parses_into_the_schema(name):
    cfg = parse_config(load_preset(name))
    assert isinstance(cfg, TrainConfig) and cfg.preset == name
    assert cfg.data.eval_batch_size == load_preset(name)['data']['eval_batch_size']  # one default, the preset's
    assert parse_config(cfg.to_dict()) == cfg  # round trip


@pytest.mark.parametrize('override,needles', [
    ('stage2.head=foo', ['stage2.head', "'foo'", 'mislas, lws, crt']),
    ('stage2.loss=focal', ['stage2.loss', 'las, ce']),
    ('stage1.loss=focal', ['stage1.loss', 'ce, balanced_softmax']),
    ('stage2.las_shape=wavy', ['stage2.las_shape', 'concave']),
    ('stage2.las_formulation=x', ['stage2.las_formulation', 'official, paper']),
    ('stage1.schedule=linear', ['stage1.schedule', 'step, cosine']),
    ('data.train_transform=autoaugment', ['data.train_transform', 'cifar, imagenet']),
    ('stage1.lr=abc', ['stage1.lr', "'abc'", 'a number']),
    ('stage1.lr=0', ['stage1.lr', '> 0']),
    ('stage1.lr=-0.1', ['stage1.lr', '> 0']),
    ('stage1.epochs=-3', ['stage1.epochs', '>= 1']),
    ('stage1.epochs=2.5', ['stage1.epochs', 'whole number']),
    ('stage2.batch_size=0', ['stage2.batch_size', '>= 1']),
    ('stage2.smooth_head=1.5', ['stage2.smooth_head', '<= 1']),
    ('stage2.smooth_tail=-0.1', ['stage2.smooth_tail', '>= 0']),
    ('stage1.mixup_alpha=-1', ['stage1.mixup_alpha', '>= 0']),
    ('stage1.momentum=1', ['stage1.momentum', '< 1']),
    ('longtail.imb_factor=0.01', ['longtail.imb_factor', '>= 1']),
    ('longtail.val_per_class=-1', ['longtail.val_per_class', '>= 0']),
    ('stage2.shift_bn=maybe', ['stage2.shift_bn', 'true or false']),
    ('runtime.mixed_precision=fp8', ['runtime.mixed_precision', 'auto, no, fp16, bf16']),
    ('stage1.warmup_epochs=-1', ['stage1.warmup_epochs', '>= 0']),
    ('stage1.milestones=[180, 160]', ['stage1.milestones', 'increasing']),
    ('data.input_size=[3, 32]', ['data.input_size', '3 entries']),
    ('stage2.las_shape=exp', ['stage2.las_power']),
])
def test_bad_values_are_refused_in_one_line(override, needles):
    with pytest.raises(ConfigError) as info:
        parse_config(apply_overrides(load_preset('cifar10-lt-if100'), [override]))
    message = str(info.value)
    assert '\n' not in message
    for needle in needles:
        assert needle in message, message


def test_unknown_keys_in_a_config_file_are_refused(tmp_path):
    from mislas_timm.config import load_config_file
    path = tmp_path / 'typo.yaml'
    path.write_text('base: cifar10-lt-if100\nstage2:\n  smoth_head: 0.2\n')
    with pytest.raises(ConfigError, match=r"unknown config key stage2\.smoth_head: did you mean 'smooth_head'"):
        parse_config(load_config_file(str(path)))
    path.write_text('base: cifar10-lt-if100\nlearning_rate: 0.2\n')
    with pytest.raises(ConfigError, match='unknown config key learning_rate'):
        parse_config(load_config_file(str(path)))


def test_yaml_no_means_the_string_no():
    # YAML 1.1 reads a bare `no` as false; mixed_precision: no must still mean fp32.
    cfg = parse_config(apply_overrides(load_preset('cifar10-lt-if100'), ['runtime.mixed_precision=no']))
    assert cfg.runtime.mixed_precision == 'no'


def test_every_invalid_key_is_reported_at_once(tmp_path):
    from mislas_timm.config import load_config_file
    path = tmp_path / 'many.yaml'
    path.write_text('base: cifar10-lt-if100\nlearning_rate: 0.2\nstage1: {lr: abc, epochs: 0}\n'
                    'stage2: {smoth_head: 0.2, las_shape: wavy}\nlongtail: {imb_factor: 0.01}\n')
    with pytest.raises(ConfigError) as info:
        parse_config(load_config_file(str(path)))
    lines = str(info.value).splitlines()
    assert lines[0] == '6 problems in the config:' and len(lines) == 7, lines
    for needle in ('unknown config key learning_rate', "stage1.lr: 'abc'", 'stage1.epochs: 0 is out of range',
                   "stage2.smoth_head: did you mean 'smooth_head'", 'stage2.las_shape', 'longtail.imb_factor'):
        assert sum(needle in line for line in lines[1:]) == 1, (needle, lines)
    assert info.value.problems == [line.strip() for line in lines[1:]]
    # Rules that span keys are all reported too, once every key on its own is valid.
    with pytest.raises(ConfigError) as info:
        parse_config(apply_overrides(load_preset('cifar10-lt-if100'), [
            'stage1.milestones=[180, 160]', 'stage2.las_shape=exp', 'groups.rank_split=[7, 3]']))
    assert str(info.value).startswith('3 problems in the config:\n')
    assert [p.split(':')[0] for p in info.value.problems] == [
        'config key stage1.milestones', 'config key stage2.las_power', 'config key groups.rank_split']


@pytest.mark.parametrize('text,where,what', [
    ('stage1:\n  lr: 0.1\n epochs: 3\n', 'line 3, column 2', 'expected <block end>'),
    ('stage1: {lr: 0.1\n', 'line 2, column 1', "expected ',' or '}'"),
    ('stage1:\n\tlr: 0.1\n', 'line 2, column 1', "found character '\\t'"),
    ('seed: 1\n  lr: 2\n', 'line 2, column 5', 'mapping values are not allowed here'),
])
def test_yaml_syntax_error_is_one_line(tmp_path, text, where, what):
    from mislas_timm.config import load_config_file
    path = tmp_path / 'broken.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path))
    message = str(info.value)
    assert '\n' not in message and '^' not in message
    assert message.startswith(f'{path} is not valid YAML: {where}: {what}'), message


def test_misspelled_preset_suggests_the_closest_name():
    with pytest.raises(ConfigError) as info:
        load_preset('cifar10-lt-if1000')
    message = str(info.value)
    assert '\n' not in message
    assert message.index("did you mean 'cifar10-lt-if100'?") < message.index('cifar10-lt-if10,')
    with pytest.raises(ConfigError) as info:
        load_preset('resnet')
    assert 'did you mean' not in str(info.value) and 'cifar10-lt-if100-cpu' in str(info.value)


def test_command_line_reports_every_config_problem(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / 'many.yaml'
    path.write_text('base: cifar10-lt-if100\nstage1: {lr: -1, batch_sise: 64}\n')
    out = tmp_path / 'run'
    proc = subprocess.run([sys.executable, str(root / 'train.py'), '--config', str(path), '--output-dir', str(out),
                           '--set', 'stage2.smooth_tail=2'], capture_output=True, text=True, cwd=root, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == 'train.py: error: 3 problems in the config:', proc.stderr
    assert len(lines) == 4 and 'Traceback' not in proc.stderr
    assert 'stage1.batch_sise' in lines[1] and 'stage1.lr' in lines[2] and 'stage2.smooth_tail' in lines[3]
    assert not out.exists()


def test_every_bad_override_is_reported_at_once():
    cfg = load_preset('cifar10-lt-if100')
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ['stage1.nope=1', 'no_equals_sign', 'stage2.lr=[1, 2', 'stage1.epochs=3'])
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert 'stage1.nope' in problems[0] and 'KEY=VALUE' in problems[1]
    assert 'stage2.lr' in problems[2] and 'line 1' in problems[2] and '\n' not in problems[2]
    assert str(info.value).startswith('3 problems in the config:')


def test_misspelled_base_preset_suggests_the_closest_name(tmp_path):
    path = tmp_path / 'mine.yaml'
    path.write_text('base: cifar10-lt-if1000\n')
    with pytest.raises(ConfigError, match="did you mean 'cifar10-lt-if100'"):
        load_config_file(str(path))


def test_the_validation_split_may_not_be_the_test_split():
    cfg = load_preset('finetune')
    cfg['model']['arch'] = 'resnet32_cifar'
    with pytest.raises(ConfigError, match='also the test split'):
        parse_config(apply_overrides(cfg, ['dataset.val_split=test']))
    with pytest.raises(ConfigError, match='also the --test-list'):
        parse_config(apply_overrides(cfg, ['dataset.val_list=a.txt', 'dataset.test_list=a.txt',
                                           'dataset.val_split=null']))
