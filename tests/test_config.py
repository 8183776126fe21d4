import pytest

from mislas_timm.config import ConfigError, apply_overrides, list_presets, load_preset

PRESETS = ['cifar10-lt-if100', 'cifar10-lt-if50', 'cifar10-lt-if10', 'cifar100-lt-if100', 'cifar100-lt-if50',
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
    assert cfg['stage2']['shift_bn'] is True and cfg['groups']['rank_split'] == [2, 5] and cfg['stage1']['lr'] == 1e-3
    with pytest.raises(ConfigError, match="no key 'shfit_bn'"):
        apply_overrides(cfg, ['stage2.shfit_bn=true'])
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        apply_overrides(cfg, ['stage2.shift_bn'])
    with pytest.raises(ConfigError, match='unknown preset'):
        load_preset('cifar10-lt-if1000')


def test_lr_schedules():
    from mislas_timm.training import lr_multiplier
    step = load_preset('cifar10-lt-if100')['stage1']
    assert [lr_multiplier(e, step) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == \
        pytest.approx([0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    cos = load_preset('cifar10-lt-if100')['stage2']
    assert lr_multiplier(0, cos) == 1.0 and lr_multiplier(5, cos) == pytest.approx(0.5)
