"""Runtime choices: what `auto` resolves to, and that a resumed run keeps what it started with."""
import pytest
import timm
import torch

import mislas_timm  # noqa: F401
from mislas_timm import runtime
from mislas_timm.config import load_preset, parse_config
from mislas_timm.training import _resolve_runtime


def cfg():
    return parse_config(load_preset('cifar10-lt-if100'))


def test_pinned_choices_win_over_auto_and_explicit_values_over_pinned():
    pinned = {'mixed_precision': 'bf16', 'channels_last': False, 'compile': False, 'decode_once': True}
    choices, notes = _resolve_runtime(cfg(), {'mixed_precision': 'auto', 'channels_last': 'auto', 'compile': False},
                                      pinned, use_cpu=True)
    assert (choices.mixed_precision, choices.channels_last) == ('bf16', False)
    assert choices.reason == 'pinned when the run started' and notes == []
    choices, notes = _resolve_runtime(cfg(), {'mixed_precision': 'no', 'channels_last': 'auto', 'compile': False},
                                      pinned, use_cpu=True)
    assert choices.mixed_precision == 'no' and choices.reason == 'given explicitly'
    assert notes == ['runtime.mixed_precision: no given explicitly; the run started with bf16']


def test_cpu_without_native_bf16_units_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: False)
    model = timm.create_model('resnet20_cifar', num_classes=10)
    assert runtime.resolve_mixed_precision('auto', model, (3, 32, 32), use_cpu=True, channels_last=True) == \
        ('no', 'the CPU has no native bf16 units (AMX / AVX512-BF16)')
    assert runtime.resolve_mixed_precision('fp16', model, (3, 32, 32), use_cpu=True, channels_last=True)[0] == 'fp16'
    with pytest.raises(ValueError, match='mixed precision must be one of'):
        runtime.resolve_mixed_precision('fp8', model, (3, 32, 32), use_cpu=True, channels_last=True)


def test_auto_on_this_cpu_is_a_measured_choice():
    """Whatever CPU runs the suite: auto gives fp32 or bf16 with the reason that decided it."""
    model = timm.create_model('resnet20_cifar', num_classes=10)
    choice, reason = runtime.resolve_mixed_precision('auto', model, (3, 32, 32), use_cpu=True, channels_last=True)
    if runtime.cpu_has_native_bf16():
        # measured faster / slower, or (on a CPU busy with other jobs) not measured within the budget
        assert choice in ('bf16', 'no')
        assert any(why in reason for why in ('x faster', 'x the fp32 speed', 'not measured')), reason
    else:
        assert choice == 'no' and 'no native bf16' in reason
    speedup = runtime.measure_bf16_speedup(model, (3, 32, 32), batch_size=8, budget_s=2.0)
    assert speedup is None or speedup > 0


def test_channels_last_auto_follows_the_architecture():
    assert runtime.resolve_channels_last('auto', timm.create_model('resnet20_cifar')) is True
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    assert runtime.resolve_channels_last('auto', mlp) is False
    assert runtime.resolve_channels_last(False, timm.create_model('resnet20_cifar')) is False
