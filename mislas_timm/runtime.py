"""How a run uses the machine: mixed precision, memory format, torch.compile; resolved once, pinned.

``auto`` picks the fastest correct choice for the device at hand:

- mixed precision: bf16 autocast on a GPU that runs bf16 (fp16 with a grad scaler on one that does
  not); on a CPU, bf16 only where the CPU has native bf16 units (AMX tiles or AVX512-BF16) *and* a
  short start-up measurement of the run's own model confirms bf16 steps are faster (other CPUs,
  e.g. AVX-512 without bf16 units, emulate bf16 and ran ~10x slower); fp32 otherwise. A model too
  slow to time within the budget even one image at a time takes bf16 on the units alone, and its
  reason says so. fp16 is refused on CPUs (Accelerate would train in fp32 and record fp16).
- channels-last: on for models with 2-D convolutions (ResNet-32 ran 20-30% faster on the CPUs of
  this project, and it is the fast layout of cuDNN's bf16 kernels), off otherwise.

The resolved choices are written to ``OUT/checkpoints/runtime.json`` when a run starts; a
``--resume`` reads them back instead of re-detecting, so a run resumed on another machine keeps
its precision. An explicit value given on the resumed command line wins (and is logged).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ['MIXED_PRECISION_CHOICES', 'SWITCH_CHOICES', 'RuntimeChoices', 'cpu_has_native_bf16', 'Bf16Measurement',
           'measure_bf16', 'measure_bf16_speedup', 'resolve_mixed_precision', 'precision_problem',
           'resolve_channels_last', 'device_name', 'has_accelerator', 'load_pinned', 'save_pinned']

MIXED_PRECISION_CHOICES = ('auto', 'no', 'fp16', 'bf16')
SWITCH_CHOICES = ('auto', True, False)
# bf16 must be at least this much faster in the start-up measurement to be chosen.
BF16_MIN_SPEEDUP = 1.15


@dataclass(frozen=True)
class RuntimeChoices:
    """The resolved choices of one run (what ``auto`` became), pinned in its state."""
    mixed_precision: str
    channels_last: bool
    compile: bool
    decode_once: bool
    device: str
    reason: str = ''
    num_processes: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def has_accelerator() -> bool:
    """A GPU-like device for Accelerate (CUDA, MPS or XPU)."""
    mps = getattr(torch.backends, 'mps', None)
    xpu = getattr(torch, 'xpu', None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX tiles) or bf16 dot-product instructions
    (AVX512-BF16). ``_is_mkldnn_bf16_supported()`` is not used: it is true on any AVX-512 CPU."""
    checks = ('_is_amx_tile_supported', '_is_avx512_bf16_supported')
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def device_name(use_cpu: bool = False) -> str:
    """A human-readable name of the training device, e.g. "NVIDIA H100" or "AMD EPYC (2 threads)"."""
    if torch.cuda.is_available() and not use_cpu:
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                name = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f'{name} ({threads} thread{"" if threads == 1 else "s"})'


def _conv_model(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def resolve_channels_last(requested: Any, model: torch.nn.Module) -> bool:
    """``auto``: channels-last for models with 2-D convolutions."""
    if requested in (True, False):
        return bool(requested)
    return _conv_model(model)


def _step_time(model: torch.nn.Module, images: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward+backward step (the parameters' gradients accumulate; dropped by the caller)."""
    start = time.perf_counter()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        loss = model(images).float().logsumexp(dim=1).mean()
    loss.backward()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Bf16Measurement:
    """What the start-up measurement found: ``speedup`` (fp32 step time / bf16 step time, best of
    ``steps`` alternated steps of each at ``batch_size``), or None when the model is too slow to time
    at :data:`MIN_MEASURE_BATCH` within the budget; ``step_s``: the best fp32 step, or (not measured)
    the untimed fp32 + bf16 pair of one image that showed it."""
    speedup: Optional[float]
    batch_size: int
    steps: int
    step_s: float


# Timed fp32 / bf16 step pairs at most; the best step of each precision counts.
MEASURE_ROUNDS = 5
# Smaller batches do not tell: ResNet-32 on an AMX CPU ran bf16 0.7-0.95x the fp32 speed at batch 1-4,
# 1.7-2.0x at 8-32 (and at the training batch).
MIN_MEASURE_BATCH = 8


def measure_bf16(model: torch.nn.Module, input_size: Sequence[int], batch_size: int = 32,
                 channels_last: bool = False, budget_s: float = 6.0) -> Bf16Measurement:
    """Time training steps of ``model`` (a copy in train mode) on the CPU in fp32 and in bf16 autocast.

    Made to hold on a busy machine and to end near ``budget_s`` after a first fp32 + bf16 pair on one
    image (it pays the one-time kernel selection, which the training would pay in its first steps) for
    any model: the next such pair (the best of up to three while a load spike would skip the
    measurement) bounds the cost of an image; the batch is ``batch_size``, halved while a warm-up pair
    and one timed pair would not fit what is left, but not below :data:`MIN_MEASURE_BATCH` (then: not
    measured). After an untimed pair at that batch, fp32 and bf16 steps alternate, at least one pair and
    up to :data:`MEASURE_ROUNDS` while they fit; the best step of each counts (a load that comes and goes
    slows both alike; the minimum filters it)."""
    import copy

    probe = copy.deepcopy(model).train()
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)

    def batch_of(size: int) -> torch.Tensor:
        images = torch.randn(size, *input_size)
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images

    one = batch_of(1)

    def pair() -> float:
        return _step_time(probe, one, bf16=False) + _step_time(probe, one, bf16=True)

    # The first pair pays the one-time kernel selection, which the training's first steps would pay anyway:
    # the budget starts after it (on a busy machine it took seconds). Any one pair can then be slowed many
    # times over by the load: while the best pair so far says even the smallest batch would not fit, and
    # another pair does, one more is timed (up to three), so a spike does not skip the measurement.
    pair()
    deadline = time.perf_counter() + budget_s
    per_image = pair()
    for _ in range(2):
        left = deadline - time.perf_counter()
        if 2 * MIN_MEASURE_BATCH * per_image <= left or per_image > left:
            break
        per_image = min(per_image, pair())
    batch = max(int(batch_size), MIN_MEASURE_BATCH)
    while batch > MIN_MEASURE_BATCH and 2 * batch * per_image > deadline - time.perf_counter():
        batch = max(batch // 2, MIN_MEASURE_BATCH)
    if 2 * batch * per_image > deadline - time.perf_counter():
        probe.zero_grad(set_to_none=True)
        return Bf16Measurement(None, batch, 0, per_image)
    images = batch_of(batch)
    _step_time(probe, images, bf16=False)
    _step_time(probe, images, bf16=True)
    fp32: List[float] = []
    bf16: List[float] = []
    while len(fp32) < MEASURE_ROUNDS:
        fp32.append(_step_time(probe, images, bf16=False))
        bf16.append(_step_time(probe, images, bf16=True))
        if time.perf_counter() + fp32[-1] + bf16[-1] > deadline:
            break
    probe.zero_grad(set_to_none=True)
    return Bf16Measurement(min(fp32) / min(bf16), batch, len(fp32), min(fp32))


def measure_bf16_speedup(model: torch.nn.Module, input_size: Sequence[int], batch_size: int = 32,
                         channels_last: bool = False, budget_s: float = 6.0) -> Optional[float]:
    """fp32 step time / bf16 step time of ``model`` on the CPU (see :func:`measure_bf16`), or None
    when the model is too slow to time within ``budget_s`` even one image at a time."""
    return measure_bf16(model, input_size, batch_size, channels_last, budget_s).speedup


def resolve_mixed_precision(requested: str, model: torch.nn.Module, input_size: Sequence[int], *,
                            use_cpu: bool, channels_last: bool, measure: bool = True,
                            budget_s: float = 6.0) -> Tuple[str, str]:
    """(choice, reason) for ``--mixed-precision``; an explicit value is returned as given (see
    :func:`precision_problem` for the ones a device cannot run).

    ``auto`` on a CPU with native bf16 units is decided by :func:`measure_bf16`; when the model is too
    slow to time within ``budget_s`` (or ``measure`` is off: several processes would measure
    differently), it takes bf16 on the strength of the units alone, and the reason says so."""
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f'mixed precision must be one of {MIXED_PRECISION_CHOICES}, got {requested!r}')
    if requested != 'auto':
        return requested, 'given explicitly'
    if torch.cuda.is_available() and not use_cpu:
        if torch.cuda.is_bf16_supported():
            return 'bf16', 'the GPU runs bf16 natively'
        return 'fp16', 'the GPU has no bf16: fp16 with a grad scaler'
    if has_accelerator() and not use_cpu:
        return 'no', 'auto keeps fp32 on this accelerator'
    if not cpu_has_native_bf16():
        return 'no', 'the CPU has no native bf16 units (AMX / AVX512-BF16)'
    if not measure:
        return 'bf16', ('the CPU has native bf16 units; not measured (several processes would measure '
                        'differently): decided by the units alone')
    found = measure_bf16(model, input_size, channels_last=channels_last, budget_s=budget_s)
    timing = f'best of {found.steps} alternated steps at batch {found.batch_size}'
    if found.speedup is None:
        return 'bf16', (f'the CPU has native bf16 units; not measured: an fp32 + bf16 training step of one image '
                        f'took {found.step_s:.2f} s, too slow to time batches of {found.batch_size} within the '
                        f'{budget_s:g} s start-up budget, so the units alone decide')
    if found.speedup >= BF16_MIN_SPEEDUP:
        return 'bf16', f'the CPU has native bf16 units and a bf16 step measured {found.speedup:.2f}x faster ({timing})'
    return 'no', f'the CPU reports bf16 units but a bf16 step measured {found.speedup:.2f}x the fp32 speed ({timing})'


def precision_problem(precision: str, use_cpu: bool) -> Optional[str]:
    """Why ``precision`` cannot run on the device, else None: fp16 needs a GPU (on a CPU, Accelerate
    would silently train in fp32 while the run records fp16)."""
    if precision == 'fp16' and use_cpu:
        return 'fp16 mixed precision needs a GPU; on a CPU use bf16 or no'
    return None


def load_pinned(path: Path) -> Optional[Dict[str, Any]]:
    """The choices pinned by an earlier start of this run, or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def save_pinned(path: Path, choices: RuntimeChoices) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(choices.to_dict(), indent=2) + '\n')
    tmp.replace(path)
