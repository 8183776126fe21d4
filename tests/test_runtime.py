"""Runtime choices: what `auto` resolves to, and that a resumed run keeps what it started with."""
import time
from pathlib import Path

import pytest
import timm
import torch

import mislas_timm  # noqa: F401
from mislas_timm import runtime
from mislas_timm.config import load_preset, parse_config
from mislas_timm.training import _resolve_runtime

ROOT = Path(__file__).resolve().parents[1]


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
    """Whatever CPU runs the suite (busy or not): auto gives fp32 or bf16 with the reason that decided it,
    and on a CPU with native bf16 units a small model's steps are timed, not skipped."""
    model = timm.create_model('resnet20_cifar', num_classes=10)
    choice, reason = runtime.resolve_mixed_precision('auto', model, (3, 32, 32), use_cpu=True, channels_last=True)
    if runtime.cpu_has_native_bf16():
        assert choice in ('bf16', 'no')
        assert 'x faster' in reason or 'x the fp32 speed' in reason, reason
        assert 'alternated steps at batch' in reason and 'not measured' not in reason, reason
    else:
        assert choice == 'no' and 'no native bf16' in reason
    found = runtime.measure_bf16(model, (3, 32, 32))  # the budget training starts with
    assert found.speedup is not None and found.speedup > 0
    assert runtime.MIN_MEASURE_BATCH <= found.batch_size <= 32 and 1 <= found.steps <= runtime.MEASURE_ROUNDS


class SlowStep(torch.nn.Module):
    """A model whose every forward takes 0.2 s: too slow to time batches within a 1 s budget."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        time.sleep(0.2)
        return self.fc(x.mean((2, 3)))


def test_a_model_too_slow_to_time_is_decided_by_the_units_and_says_so(monkeypatch):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: True)  # the decision on any CPU
    start = time.perf_counter()
    choice, reason = runtime.resolve_mixed_precision('auto', SlowStep(), (3, 8, 8), use_cpu=True,
                                                     channels_last=False, budget_s=1.0)
    assert time.perf_counter() - start < 3.0  # pairs of one image (0.4 s each), not a batch of 8 (3.2 s)
    assert choice == 'bf16'
    assert reason.startswith('the CPU has native bf16 units; not measured: an fp32 + bf16 training step of one image')
    assert 'too slow to time batches of 8 within the 1 s start-up budget, so the units alone decide' in reason
    found = runtime.measure_bf16(SlowStep(), (3, 8, 8), budget_s=1.0)
    assert found.speedup is None and found.steps == 0 and found.step_s >= 0.4


def test_readme_states_the_rule_the_code_applies():
    """README's sentence on `auto` gives the measurement's numbers and what happens when it cannot run."""
    readme = (ROOT / 'README.md').read_text()
    text = ' '.join(readme.split())
    assert f'at least {runtime.BF16_MIN_SPEEDUP}x faster' in text
    assert f'batch {runtime.MIN_MEASURE_BATCH}-32' in text and 'up to five alternated fp32 / bf16' in text
    assert runtime.MEASURE_ROUNDS == 5 and 'within 6 s' in text
    assert 'a model too slow to time in that budget takes bf16 on the units alone' in text
    assert 'fp16 needs a GPU: on a CPU it is refused in one line' in text


@pytest.mark.parametrize('requested,pinned,needles', [
    ({'mixed_precision': 'fp16'}, None, ['--mixed-precision fp16', 'needs a GPU', 'bf16 or no']),
    ({'mixed_precision': 'auto'}, {'mixed_precision': 'fp16'}, ['--resume', 'started in fp16', 'resume it on a GPU']),
])
def test_fp16_is_refused_on_a_cpu(requested, pinned, needles):
    from mislas_timm.config import ConfigError
    with pytest.raises(ConfigError) as err:
        _resolve_runtime(cfg(), {**requested, 'channels_last': True, 'compile': False}, pinned, use_cpu=True)
    assert all(n in str(err.value) for n in needles) and '\n' not in str(err.value), str(err.value)
    assert runtime.precision_problem('fp16', use_cpu=False) is None
    assert runtime.precision_problem('bf16', use_cpu=True) is None and runtime.precision_problem('no', True) is None


def test_channels_last_auto_follows_the_architecture():
    assert runtime.resolve_channels_last('auto', timm.create_model('resnet20_cifar')) is True
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    assert runtime.resolve_channels_last('auto', mlp) is False
    assert runtime.resolve_channels_last(False, timm.create_model('resnet20_cifar')) is False
