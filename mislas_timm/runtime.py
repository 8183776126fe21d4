"""How a run uses the machine: mixed precision, memory format, torch.compile; resolved once, pinned.

``auto`` picks the fastest correct choice for the device at hand:

- mixed precision: bf16 autocast on a GPU that runs bf16 (fp16 with a grad scaler on one that does
  not); on a CPU, bf16 only where the CPU has native bf16 units (AMX tiles or AVX512-BF16) *and* a
  short start-up measurement of the run's own model confirms bf16 steps are faster (other CPUs,
  e.g. AVX-512 without bf16 units, emulate bf16 and ran ~10x slower); fp32 otherwise.
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
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

__all__ = ['MIXED_PRECISION_CHOICES', 'SWITCH_CHOICES', 'RuntimeChoices', 'cpu_has_native_bf16',
           'measure_bf16_speedup', 'resolve_mixed_precision', 'resolve_channels_last', 'device_name',
           'has_accelerator', 'load_pinned', 'save_pinned']

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


def _step_time(model: torch.nn.Module, images: torch.Tensor, bf16: bool, steps: int) -> float:
    """Seconds per forward+backward step (parameters' gradients are discarded afterwards)."""
    def one() -> None:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = model(images).float().logsumexp(dim=1).mean()
        loss.backward()

    one()  # warm-up: kernel selection, allocator
    start = time.perf_counter()
    for _ in range(steps):
        one()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def measure_bf16_speedup(model: torch.nn.Module, input_size: Sequence[int], batch_size: int = 32,
                         channels_last: bool = False, budget_s: float = 6.0) -> Optional[float]:
    """fp32 step time / bf16 step time of ``model`` on the CPU (a copy in train mode), or None
    when one fp32 step is too slow to measure within ``budget_s`` (a large model, or a CPU busy
    with other work)."""
    import copy

    probe = copy.deepcopy(model).train()
    images = torch.randn(batch_size, *input_size)
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    fp32 = _step_time(probe, images, bf16=False, steps=1)
    if time.perf_counter() - start > budget_s / 4:
        return None
    steps = max(1, min(5, int(budget_s / 4 / max(fp32, 1e-6))))
    fp32 = _step_time(probe, images, bf16=False, steps=steps)
    bf16 = _step_time(probe, images, bf16=True, steps=steps)
    return fp32 / bf16


def resolve_mixed_precision(requested: str, model: torch.nn.Module, input_size: Sequence[int], *,
                            use_cpu: bool, channels_last: bool, measure: bool = True) -> Tuple[str, str]:
    """(choice, reason) for ``--mixed-precision``; an explicit value is returned as given."""
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
        return 'bf16', 'the CPU has native bf16 units (not measured)'
    speedup = measure_bf16_speedup(model, input_size, channels_last=channels_last)
    if speedup is None:
        return 'bf16', ('the CPU has native bf16 units (not measured: one fp32 step outran the start-up budget, '
                        'a large model or a busy CPU)')
    if speedup >= BF16_MIN_SPEEDUP:
        return 'bf16', f'the CPU has native bf16 units and a bf16 step measured {speedup:.2f}x faster'
    return 'no', f'the CPU reports bf16 units but a bf16 step measured {speedup:.2f}x the fp32 speed'


def load_pinned(path: Path) -> Optional[Dict[str, Any]]:
    """The choices pinned by an earlier start of this run, or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def save_pinned(path: Path, choices: RuntimeChoices) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(choices.to_dict(), indent=2) + '\n')
    tmp.replace(path)
