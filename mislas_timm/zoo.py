"""The model zoo: every published MiSLAS model with its Hub id and its folder in ``model_cards/``.

Small models ship in the repository (``model_cards/<name>/``, a complete Hub folder) so the demo
and the tests run offline; :func:`mislas_timm.load_model` uses the folder when it exists and the
Hub id otherwise. Top-1 and ECE are read from each folder's metrics.json, never typed in.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ['ZooEntry', 'ZOO', 'ZOO_DIR', 'names', 'get', 'table']

HUB_ORG = 'mislas-timm'
# The repository's model_cards/ (an editable install keeps it beside the package);
# MISLAS_ZOO_DIR points elsewhere, e.g. a copy next to a wheel install.
ZOO_DIR = Path(os.environ.get('MISLAS_ZOO_DIR', Path(__file__).resolve().parents[1] / 'model_cards'))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str

    @property
    def hub_id(self) -> str:
        return f'{HUB_ORG}/{self.name}'

    @property
    def folder(self) -> Path:
        return ZOO_DIR / self.name

    def metrics(self) -> Optional[Dict]:
        path = self.folder / 'metrics.json'
        return json.loads(path.read_text()) if path.is_file() else None


ZOO: List[ZooEntry] = [
    ZooEntry('resnet32_cifar.cifar10_lt_if100_ce', 'stage 1, plain cross-entropy (no mixup): the over-confident baseline'),
    ZooEntry('resnet32_cifar.cifar10_lt_if100_mixup', 'stage 1 with mixup (MiSLAS stage 1)'),
    ZooEntry('resnet32_cifar.cifar10_lt_if100_mislas', 'MiSLAS stage 2 (LAS + LWS head) on the mixup stage 1'),
]


def names() -> List[str]:
    return [entry.name for entry in ZOO]


def get(name: str) -> Optional[ZooEntry]:
    return next((entry for entry in ZOO if entry.name == name), None)


def table() -> List[Dict]:
    """One row per model: name, hub_id, folder, top1, ece (fractions; None if the folder is absent)."""
    rows = []
    for entry in ZOO:
        metrics = entry.metrics() or {}
        rows.append({'name': entry.name, 'hub_id': entry.hub_id, 'folder': str(entry.folder),
                     'description': entry.description, 'top1': metrics.get('top1'), 'ece': metrics.get('ece')})
    return rows
