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


def markdown_table() -> str:
    """The README table (numbers in percent, read from each folder's metrics.json)."""
    lines = ['| model | Hub id | top-1 (%) | ECE (%) | what it is |', '|---|---|---|---|---|']
    for row in table():
        top1 = f'{100 * row["top1"]:.2f}' if row['top1'] is not None else 'n/a'
        ece = f'{100 * row["ece"]:.2f}' if row['ece'] is not None else 'n/a'
        lines.append(f'| `{row["name"]}` | `{row["hub_id"]}` | {top1} | {ece} | {row["description"]} |')
    return '\n'.join(lines)


def verify(dataset: str, tolerance: float = 1e-6) -> List[Dict]:
    """Re-run the evaluator on every shipped model; compare its top-1 / ECE with metrics.json."""
    from .evaluation import evaluate
    from .hub import load_model

    results = []
    for entry in ZOO:
        saved = entry.metrics()
        if saved is None:
            raise FileNotFoundError(f'{entry.folder} has no metrics.json')
        report = evaluate(load_model(entry.name), dataset, split=saved.get('split', 'test'))
        ok = all(abs(report[k] - saved[k]) <= tolerance for k in ('top1', 'ece'))
        results.append({'name': entry.name, 'top1': report['top1'], 'ece': report['ece'],
                        'card_top1': saved['top1'], 'card_ece': saved['ece'], 'ok': ok})
    return results


if __name__ == '__main__':
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog='python -m mislas_timm.zoo')
    parser.add_argument('--verify', metavar='DATASET', help='re-evaluate every model on DATASET and compare')
    args = parser.parse_args()
    if args.verify:
        rows = verify(args.verify)
        for r in rows:
            print(f'{r["name"]}: top-1 {100 * r["top1"]:.2f}% (card {100 * r["card_top1"]:.2f}%), '
                  f'ECE {100 * r["ece"]:.2f}% (card {100 * r["card_ece"]:.2f}%): {"OK" if r["ok"] else "MISMATCH"}')
        sys.exit(0 if all(r['ok'] for r in rows) else 1)
    print(markdown_table())
