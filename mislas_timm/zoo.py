"""The model zoo: every published MiSLAS model with its Hub id and its folder in ``model_cards/``.

The names are the timm pretrained tags of :mod:`mislas_timm.models.pretrained_tags` (one table for
both). Small models ship in the repository (``model_cards/<name>/``, a complete Hub folder) so the
demo and the tests run offline; :func:`mislas_timm.load_model` uses the folder when it exists and
the Hub id otherwise. Top-1 and ECE are read from each folder's metrics.json, never typed in.

    python -m mislas_timm.zoo                          # the README table (shipped models)
    python -m mislas_timm.zoo --verify PATH            # re-evaluate every shipped model, compare
    python -m mislas_timm.zoo build RUNS --dataset PATH [--only NAME ...]

``build`` turns train.py run folders (``RUNS/<run>/stage<N>``, see ``benchmarks/paper_runs.sh``)
into publishable zoo folders: the zoo tag and Hub id in config.json, no path of the training
machine anywhere (the data set is named by its Hub id, commands are printed as a user types them),
metrics re-measured by the current evaluator, the card and reliability diagram rendered from them.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .models.pretrained_tags import HUB_ORG, PRETRAINED_TAGS

__all__ = ['ZooEntry', 'ZOO', 'ZOO_DIR', 'PAPER', 'names', 'get', 'shipped', 'table', 'markdown_table', 'verify',
           'build', 'public_command', 'public_meta', 'stage1_epochs']

# The repository's model_cards/ (an editable install keeps it beside the package);
# MISLAS_ZOO_DIR points elsewhere, e.g. a copy next to a wheel install.
ZOO_DIR = Path(os.environ.get('MISLAS_ZOO_DIR', Path(__file__).resolve().parents[1] / 'model_cards'))

DATASET_ID = 'uoft-cs/cifar10'
DATA_NOTE = ('CIFAR-10 in the `uoft-cs/cifar10` schema (train 50,000 / test 10,000); the numbers here were measured '
             'on a JPEG re-export of it, which costs a point or two against the PNG-exact data set')

# Which run folder of benchmarks/paper_runs.sh each zoo model comes from (RUNS/<run>/stage<N>).
SOURCES: Dict[str, str] = {
    'resnet32_cifar.cifar10_lt_if100_mislas': 'if100-mixup/stage2',
    'resnet32_cifar.cifar10_lt_if50_mislas': 'if50-mixup/stage2',
    'resnet32_cifar.cifar10_lt_if10_mislas': 'if10-mixup/stage2',
    'resnet32_cifar.cifar10_lt_if100_ce': 'if100-ce/stage1',
    'resnet32_cifar.cifar10_lt_if100_mixup': 'if100-mixup/stage1',
    'resnet32_cifar.cifar10_lt_if100_crt': 'if100-crt/stage2',
    'resnet32_cifar.cifar10_lt_if100_lws': 'if100-lws/stage2',
}

# The paper's top-1 / ECE (%) for the same rows (DESIGN.md section 2; CE and mixup cited by the paper).
PAPER: Dict[str, tuple] = {
    'resnet32_cifar.cifar10_lt_if100_mislas': (82.1, 3.70),
    'resnet32_cifar.cifar10_lt_if50_mislas': (85.7, 2.17),
    'resnet32_cifar.cifar10_lt_if10_mislas': (90.0, 1.20),
    'resnet32_cifar.cifar10_lt_if100_ce': (70.4, None),
    'resnet32_cifar.cifar10_lt_if100_mixup': (73.1, None),
    'resnet32_cifar.cifar10_lt_if100_crt': (79.1, 10.6),
    'resnet32_cifar.cifar10_lt_if100_lws': (76.3, 15.6),
}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    source: Optional[str] = None

    @property
    def hub_id(self) -> str:
        return f'{HUB_ORG}/{self.name}'

    @property
    def folder(self) -> Path:
        return ZOO_DIR / self.name

    @property
    def tag(self) -> str:
        return self.name.split('.', 1)[1]

    def metrics(self) -> Optional[Dict]:
        path = self.folder / 'metrics.json'
        return json.loads(path.read_text()) if path.is_file() else None


ZOO: List[ZooEntry] = [ZooEntry(f'{arch}.{tag}', text, SOURCES.get(f'{arch}.{tag}'))
                       for arch, tag, text in PRETRAINED_TAGS]


def names() -> List[str]:
    return [entry.name for entry in ZOO]


def get(name: str) -> Optional[ZooEntry]:
    return next((entry for entry in ZOO if entry.name == name), None)


def shipped() -> List[ZooEntry]:
    """The entries whose folder ships in model_cards/ (the others are tags awaiting their weights)."""
    return [entry for entry in ZOO if (entry.folder / 'config.json').is_file()]


def stage1_epochs(mislas: Dict[str, Any]) -> Optional[int]:
    """The stage-1 epochs a zoo model was trained with (its own recipe, or its stage 1's for a stage-2 model)."""
    recipe = ((mislas.get('stage1') or {}).get('recipe') if mislas.get('stage') == 2 else mislas.get('recipe')) or {}
    return recipe.get('epochs')


def table() -> List[Dict]:
    """One row per shipped model: name, hub_id, folder, description, top1, ece (fractions), paper (%)."""
    from .hub import read_hub_config

    rows = []
    for entry in shipped():
        metrics = entry.metrics() or {}
        mislas = read_hub_config(entry.folder).get('mislas') or {}
        rows.append({'name': entry.name, 'hub_id': entry.hub_id, 'folder': str(entry.folder),
                     'description': entry.description, 'top1': metrics.get('top1'), 'ece': metrics.get('ece'),
                     'paper': PAPER.get(entry.name), 'stage1_epochs': stage1_epochs(mislas)})
    return rows


def markdown_table() -> str:
    """The README table (numbers in percent, read from each folder's metrics.json; the paper's beside)."""
    lines = ['| model | stage-1 epochs | top-1 (%) | ECE (%) | paper top-1 / ECE (%) | what it is |',
             '|---|---|---|---|---|---|']
    for row in table():
        top1 = f'{100 * row["top1"]:.2f}' if row['top1'] is not None else 'n/a'
        ece = f'{100 * row["ece"]:.2f}' if row['ece'] is not None else 'n/a'
        paper = row['paper']
        paper_cell = (f'{paper[0]:.1f} / ' + (f'{paper[1]:.2f}' if paper[1] is not None else '-')) if paper else '-'
        lines.append(f'| `{row["name"]}` | {row["stage1_epochs"] or "?"} | {top1} | {ece} | {paper_cell} '
                     f'| {row["description"]} |')
    return '\n'.join(lines)


def verify(dataset: str, tolerance: float = 1e-6) -> List[Dict]:
    """Re-run the evaluator on every shipped model; compare its top-1 / ECE with metrics.json."""
    from .evaluation import evaluate
    from .hub import load_model

    results = []
    for entry in shipped():
        saved = entry.metrics()
        if saved is None:
            raise FileNotFoundError(f'{entry.folder} has no metrics.json')
        report = evaluate(load_model(entry.name), dataset, split=saved.get('split', 'test'))
        ok = all(abs(report[k] - saved[k]) <= tolerance for k in ('top1', 'ece'))
        results.append({'name': entry.name, 'top1': report['top1'], 'ece': report['ece'],
                        'card_top1': saved['top1'], 'card_ece': saved['ece'], 'ok': ok})
    return results


# ----------------------------------------------------------------------------------------------
# Publishing: run folders -> zoo folders without a trace of the machine that trained them.

def _run_path(value: str) -> str:
    """A run folder path as a user would type it: ``runs/<run>[/stage<N>]``."""
    path = Path(value.rstrip('/'))
    if path.name.startswith('stage') and path.name[5:].isdigit():
        return f'runs/{path.parent.name}/{path.name}'
    return f'runs/{path.name}'


# Flags whose value is a file of the user's own (a config, split lists): printed by file name.
_FILE_FLAGS = ('--config', '--data-root', '--train-list', '--test-list', '--val-list')


def public_command(command: Optional[str], dataset_id: str = DATASET_ID) -> Optional[str]:
    """``command`` as a user types it from a clone: ``python train.py``, ``--dataset <Hub id>``,
    run folders relative (``runs/<run>``), model sources that are paths made relative the same way."""
    if not command:
        return command
    args = shlex.split(command)
    if args and Path(args[0]).name == 'train.py':
        args = ['python', 'train.py'] + args[1:]
    out: List[str] = []
    replace_next = None
    for arg in args:
        if replace_next is not None:
            out.append(replace_next(arg))
            replace_next = None
            continue
        flag, eq, value = arg.partition('=')
        handler = {'--dataset': lambda v: dataset_id, '--output-dir': _run_path,
                   '--init': lambda v: v if ':' in v or '/' not in v else _run_path(v),
                   **{f: lambda v: Path(v).name for f in _FILE_FLAGS}}.get(flag)
        if handler is not None and eq:
            out.append(f'{flag}={handler(value)}')
        else:
            out.append(arg)
            replace_next = handler
    return ' '.join(shlex.quote(a) for a in out)


def public_meta(meta: Dict[str, Any], dataset_id: str = DATASET_ID) -> Dict[str, Any]:
    """config.json's ``mislas`` block with every machine path replaced (recursively into ``stage1``)."""
    out = dict(meta)
    out['dataset'] = dataset_id
    out['data_note'] = DATA_NOTE
    if 'command' in out:
        out['command'] = public_command(out['command'], dataset_id)
        precision = (out.get('runtime') or {}).get('mixed_precision')
        if out['command'] and precision and '--mixed-precision' not in out['command']:
            # auto resolves per machine: the card states what this run used, so a rerun matches it
            out['command'] += f' --mixed-precision {precision}'
    if isinstance(out.get('source'), str) and '/' in out['source'] and ':' not in out['source']:
        out['source'] = _run_path(out['source'])
    if isinstance(out.get('stage1'), dict):
        out['stage1'] = public_meta(out['stage1'], dataset_id)
        out['stage1'].pop('data_note', None)
        out['stage1'].pop('dataset', None)
    return out


def build(runs: str, dataset: str, only: Optional[Sequence[str]] = None, zoo_dir: Optional[Path] = None,
          entries: Optional[Sequence[ZooEntry]] = None, dataset_id: str = DATASET_ID,
          limitations: Optional[Sequence[str]] = None) -> List[Path]:
    """Publish each entry whose run folder exists under ``runs`` into ``zoo_dir/<name>`` (atomically)."""
    from .evaluation import evaluate
    from .hub import check_card_matches_metrics, load_model, save_hub_folder

    zoo_dir = Path(zoo_dir or ZOO_DIR)
    written = []
    for entry in entries or ZOO:
        if only and entry.name not in only:
            continue
        source = Path(runs) / (entry.source or '')
        if not entry.source or not (source / 'model.safetensors').is_file():
            continue
        model = load_model(str(source))
        run_metrics = json.loads((source / 'metrics.json').read_text())
        meta = public_meta(getattr(model, 'mislas_config', {}) or {}, dataset_id)
        model.mislas_config = meta
        cfg = {k: v for k, v in model.pretrained_cfg.items() if k != 'url'}
        cfg.update(tag=entry.tag, hf_hub_id=entry.hub_id)
        model.pretrained_cfg = model.default_cfg = cfg
        report = evaluate(model, dataset, split=run_metrics.get('split', 'test'), dataset_name=dataset_id)
        for key in ('runtime', 'train_time_s'):
            if key in run_metrics:
                report[key] = run_metrics[key]
        target = save_hub_folder(model, zoo_dir / entry.name, label_names=list(cfg.get('label_names') or []),
                                 mislas=meta, metrics=report,
                                 card_context={'hub_id': entry.hub_id, 'dataset_id': dataset_id,
                                               'title': f'{entry.name}: {entry.description}',
                                               'limitations': list(limitations or []) or None})
        check_card_matches_metrics((target / 'README.md').read_text(), report)
        written.append(zoo_dir / entry.name)
    return written


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog='python -m mislas_timm.zoo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--verify', metavar='DATASET', help='re-evaluate every shipped model on DATASET and compare')
    sub = parser.add_subparsers(dest='command')
    b = sub.add_parser('build', help='publish run folders into model_cards/')
    b.add_argument('runs', help='folder holding the run folders of benchmarks/paper_runs.sh')
    b.add_argument('--dataset', required=True, help='CIFAR-10 (local folder or Hub id) to re-evaluate on')
    b.add_argument('--only', action='append', help='zoo name to build (repeatable; default: every one found)')
    b.add_argument('--limitation', action='append', default=[], help='a line for the cards\' limitations')
    args = parser.parse_args(argv)
    if args.command == 'build':
        for path in build(args.runs, args.dataset, only=args.only, limitations=args.limitation):
            print(f'wrote {path}')
        return 0
    if args.verify:
        rows = verify(args.verify)
        for r in rows:
            print(f'{r["name"]}: top-1 {100 * r["top1"]:.2f}% (card {100 * r["card_top1"]:.2f}%), '
                  f'ECE {100 * r["ece"]:.2f}% (card {100 * r["card_ece"]:.2f}%): {"OK" if r["ok"] else "MISMATCH"}')
        return 0 if all(r['ok'] for r in rows) else 1
    print(markdown_table())
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
