"""A stage's progress: a tqdm bar on a terminal, else a log line with the stage's ETA."""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

__all__ = ['StageProgress']

logger = logging.getLogger('mislas_timm.train')  # one training log (OUT/train.log) for the whole package


class StageProgress:
    """Progress of a stage: a tqdm bar on a terminal; without one (nohup, CI, a scheduler) a log line
    at most every ``every_s`` seconds with epoch, step, loss, lr, images/s and the stage's ETA."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, start_epoch: int, is_main: bool,
                 num_processes: int = 1, every_s: float = 30.0, tty: Optional[bool] = None):
        self.stage, self.epochs, self.steps_per_epoch = stage, epochs, steps_per_epoch
        self.is_main, self.num_processes, self.every_s = is_main, num_processes, every_s
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.steps_left_at_start = (epochs - start_epoch) * steps_per_epoch
        self.steps_done = 0
        self.images = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.bar = None
        self.epoch = start_epoch

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.is_main and self.tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.steps_per_epoch, desc=f'{self.stage} {epoch + 1}/{self.epochs}', leave=False)

    def eta_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        left = self.steps_left_at_start - self.steps_done
        return elapsed / max(self.steps_done, 1) * max(left, 0)

    def line(self, step: int, loss: float, lr: float) -> str:
        rate = self.images * self.num_processes / max(time.perf_counter() - self.started, 1e-9)
        eta = self.eta_s()
        return (f'{self.stage} epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch}: '
                f'loss {loss:.4f}, lr {lr:.5g}, {rate:.0f} images/s, stage ETA {_duration(eta)} '
                f'(ends ~{time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + eta))})')

    def step(self, step: int, loss: float, lr: float, batch: int) -> None:
        self.steps_done += 1
        self.images += batch
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.4g}', eta=_duration(self.eta_s()))
            return
        now = time.perf_counter()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            logger.info(self.line(step, loss, lr))

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f'{h}h{rest // 60:02d}m' if h else f'{rest // 60}m{rest % 60:02d}s'
