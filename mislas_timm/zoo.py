"""The model zoo: every published MiSLAS model with its Hub id and its folder in ``model_cards/``.

The names are the timm pretrained tags of :mod:`mislas_timm.models.pretrained_tags` (one table for
both). Small models ship as complete Hub folders: ``model_cards/<name>/`` in the repository (the
source of truth), copied into the package (``mislas_timm/model_cards/<name>/``) when a wheel is
built, so ``timm.create_model(name, pretrained=True)``, :func:`mislas_timm.load_model`, the demo and
the tests load them offline; the Hub id serves the tags not shipped. One function says where a
tag's folder is (:func:`mislas_timm.models.pretrained_tags.shipped_folder`). Top-1 and ECE are read
from each folder's metrics.json, never typed in.

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
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .models.pretrained_tags import HUB_ORG, PRETRAINED_TAGS, shipped_folder, zoo_dirs

__all__ = ['ZooEntry', 'ZOO', 'ZOO_DIR', 'PAPER', 'names', 'get', 'shipped', 'table', 'markdown_table', 'verify',
           'build', 'public_command', 'public_meta', 'stage1_epochs', 'data_note', 'card_limitations', 'ZooError']

# Where `build` writes by default: the first place loading looks (zoo_dirs: $MISLAS_ZOO_DIR when set,
# else the repository's model_cards/ in a checkout, else the package's copy).
ZOO_DIR = zoo_dirs()[0]

DATASET_ID = 'uoft-cs/cifar10'


def data_note(encoding: Optional[str], dataset_id: str = DATASET_ID) -> str:
    """What the data was, for a card: the schema, and whether the pixels were the original ones.

    ``encoding`` is what the run recorded (:func:`mislas_timm.data.encoding.image_encoding`)."""
    if not encoding:
        return f'CIFAR-10 in the `{dataset_id}` schema (train 50,000 / test 10,000); image encoding not recorded'
    if 'lossless' in encoding:
        return (f'CIFAR-10 (train 50,000 / test 10,000) with its original pixels ({encoding}), as the Hub\'s '
                f'`{dataset_id}` holds them')
    return (f'CIFAR-10 in the `{dataset_id}` schema (train 50,000 / test 10,000), but a lossy re-export of it '
            f'({encoding}), not the Hub\'s lossless copy: the numbers here were measured on the re-export')


# Which run folder of benchmarks/paper_runs.sh each zoo model comes from (RUNS/<run>/stage<N>).
SOURCES: Dict[str, str] = {
    'resnet32_cifar.cifar10_lt_if100_mislas': 'if100-mixup-png/stage2',
    'resnet32_cifar.cifar10_lt_if50_mislas': 'if50-mixup-png/stage2',
    'resnet32_cifar.cifar10_lt_if10_mislas': 'if10-mixup-png/stage2',
    'resnet32_cifar.cifar10_lt_if100_ce': 'if100-ce-png/stage1',
    'resnet32_cifar.cifar10_lt_if100_mixup': 'if100-mixup-png/stage1',
    'resnet32_cifar.cifar10_lt_if100_crt': 'if100-crt-png/stage2',
    'resnet32_cifar.cifar10_lt_if100_lws': 'if100-lws-png/stage2',
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

# Why a model misses the paper's top-1, by whether it trained on the original pixels (BENCHMARKS.md,
# "Where the gap is": the same recipe, images, seeds and code on the JPEG copy and on the PNG copy).
GAP_NOTES: Dict[bool, str] = {
    False: ('Most of that is the data: this copy\'s images are a lossy re-export, and the 200-epoch CIFAR-10-LT '
            'IF100 runs with the same images, seeds and code gained 5.6-6.4 points of top-1 on the original pixels '
            '(BENCHMARKS.md, "Where the gap is"). The reference code also reports its best test epoch where this '
            'card reports the last.'),
    True: ('The reference code reports its best test epoch where this card reports the last, and both are single '
           'seeds (BENCHMARKS.md, "Where the gap is").'),
}


def _paused(*epochs: int) -> str:
    """How a stage-1 run that a session stop interrupted went on; ``epochs``: the last complete epoch at each stop."""
    if len(epochs) == 1:
        when = f'once (after epoch {epochs[0]}, when a session ended)'
    else:
        counts = {2: 'twice', 3: 'three times'}
        listed = ', '.join(map(str, epochs[:-1])) + f' and {epochs[-1]}'
        when = f'{counts.get(len(epochs), f"{len(epochs)} times")} (after epochs {listed}, each time when a session ended)'
    return (f'paused {when} and resumed with --resume, on one CPU thread of the same machine type before and '
            'after')


# What a card must say about how a run went, beyond what its files record; keyed by the run folder
# (``RUNS/<run>``, see SOURCES), so a model rebuilt from another run does not inherit them.
_ON_THE_MIXUP_STAGE1 = 'The stage 1 (the mixup stage 1 of resnet32_cifar.cifar10_lt_if100_mislas) was '
RUN_NOTES: Dict[str, List[str]] = {
    'if100-mixup-png': [f'The 200-epoch stage 1 was {_paused(120)}.'],
    'if100-ce-png': [f'The 200-epoch stage 1 was {_paused(121)}.'],
    'if100-crt-png': [f'{_ON_THE_MIXUP_STAGE1}{_paused(120)}.'],
    'if100-lws-png': [f'{_ON_THE_MIXUP_STAGE1}{_paused(120)}.'],
    'if50-mixup-png': [f'The 200-epoch stage 1 was {_paused(68)}.'],
    'if10-mixup-png': [f'The 200-epoch stage 1 was {_paused(55, 192)}.',
                       'ECE is 0.63 points above the paper\'s 1.20; over test sets of 10,000 images it varies by '
                       'about 0.23 (one standard deviation). Stage 2 retrained on the same stage 1 with seeds 1-3 '
                       'gives 1.83-1.92, so the gap is not stage-2 noise; this model has one stage-1 seed '
                       '(BENCHMARKS.md, "IF10\'s ECE").'],
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
        """The shipped folder (where loading finds it), else where ``build`` would write it."""
        return shipped_folder(self.name) or ZOO_DIR / self.name

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
    """The entries with a shipped folder (the others are tags awaiting their weights, served by the Hub)."""
    return [entry for entry in ZOO if shipped_folder(entry.name) is not None]


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
    """Re-run the evaluator on every shipped model; compare its top-1 / ECE with metrics.json.

    Every model is checked before any is evaluated: ``dataset`` must hold images encoded like the ones
    the model was trained and measured on, or the comparison would fail for a reason that is not the model's."""
    from .evaluation import evaluate
    from .hub import load_model

    checked = []
    encodings: Dict[str, str] = {}
    for entry in shipped():
        saved = entry.metrics()
        if saved is None:
            raise ZooError(f'{entry.folder} has no metrics.json: rebuild it with python -m mislas_timm.zoo build')
        model = load_model(entry.name)
        split = saved.get('split', 'test')
        _check_encoding(model, entry.folder, dataset, split, encodings)
        checked.append((entry, model, saved, split))
    results = []
    for entry, model, saved, split in checked:
        report = evaluate(model, dataset, split=split)
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


def _public_source(value: str) -> str:
    """A model source (``--init``, the recorded stage-1 source) with any machine path made a run path:
    zoo names and ``hf-hub:`` ids stay, ``local-dir:PATH`` and folders become ``runs/<run>/stage<N>``."""
    if value.startswith('local-dir:'):
        return 'local-dir:' + _run_path(value[len('local-dir:'):])
    if ':' in value or '/' not in value:
        return value
    return _run_path(value)


def _public_override(value: str) -> str:
    """A ``--set key=value`` whose value is an absolute or home path keeps only the path's last part."""
    key, eq, setting = value.partition('=')
    if eq and setting.startswith(('/', '~')):
        return f'{key}={Path(setting).name}'
    return value


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
                   '--init': _public_source, '--set': _public_override,
                   **{f: lambda v: Path(v).name for f in _FILE_FLAGS}}.get(flag)
        if handler is not None and eq:
            out.append(f'{flag}={handler(value)}')
        else:
            out.append(arg)
            replace_next = handler
    return ' '.join(shlex.quote(a) for a in out)


def public_meta(meta: Dict[str, Any], dataset_id: str = DATASET_ID, encoding: Optional[str] = None) -> Dict[str, Any]:
    """config.json's ``mislas`` block with every machine path replaced (recursively into ``stage1``);
    ``encoding`` (the training images', when the run predates recording it) goes into the data note."""
    out = dict(meta)
    out['dataset'] = dataset_id
    if encoding:
        out.setdefault('image_encoding', encoding)  # what the run recorded wins
    out['data_note'] = data_note(out.get('image_encoding'), dataset_id)
    if 'command' in out:
        out['command'] = public_command(out['command'], dataset_id)
        precision = (out.get('runtime') or {}).get('mixed_precision')
        if out['command'] and precision and '--mixed-precision' not in out['command']:
            # auto resolves per machine: the card states what this run used, so a rerun matches it
            out['command'] += f' --mixed-precision {precision}'
    for key in ('source', 'init'):  # a local --init path must not end up in a published card
        if isinstance(out.get(key), str):
            out[key] = _public_source(out[key])
    if isinstance(out.get('stage1'), dict):
        out['stage1'] = public_meta(out['stage1'], dataset_id)
        out['stage1'].pop('data_note', None)
        out['stage1'].pop('dataset', None)
    return out


def card_limitations(name: str, meta: Dict[str, Any], top1: float, run: Optional[str] = None) -> List[str]:
    """The limitations every zoo card states, from the model's recorded facts, its measured top-1 and the
    notes of the run folder it came from."""
    counts = meta.get('class_counts') or []
    lines = [f'One training run with one seed ({meta.get("seed")}) and one long-tail split (data seed '
             f'{meta.get("data_seed")}): no confidence intervals.']
    paper = PAPER.get(name)
    if paper and 100 * top1 < paper[0]:
        lines.append(f'Top-1 is {paper[0] - 100 * top1:.1f} points below the paper\'s {paper[0]:.1f}%. '
                     + GAP_NOTES['lossless' in (meta.get('image_encoding') or '')])
    held_out = (f' {meta["val_per_class"]} images per class were held out of training as the validation split'
                f' (the head class trains on {counts[0]:,} images).' if meta.get('val_per_class') and counts else
                ' Trained before the held-out validation split existed, so post-hoc calibration '
                '(python -m mislas_timm.calibrate) cannot be fitted on this model.')
    lines.append('Reported at the last epoch; the test split was used only for this report.' + held_out)
    epochs = stage1_epochs(meta)
    if epochs and epochs < 200:
        lines.append(f'Trained on a CPU budget: a {epochs}-epoch stage 1 instead of the paper\'s 200.')
    lines += RUN_NOTES.get(run or '', [])
    lines.append('32x32 CIFAR-10 classes only; not a general-purpose classifier.')
    return [line.strip() for line in lines]


class ZooError(ValueError):
    """A zoo build that cannot be published as asked; the message names the fix."""


def _check_encoding(model, folder: Path, dataset: str, split: str, encodings: Dict[str, str]) -> None:
    """Refuse to measure ``model`` on ``dataset`` when its images are stored unlike the ones the model
    recorded training on (a JPEG-trained model on the PNG copy, or the reverse). ``encodings`` caches
    each split's encoding across models."""
    from .data.encoding import image_encoding
    from .data.hf import load_split, resolve_columns

    if split not in encodings:
        ds = load_split(dataset, split)
        encodings[split] = image_encoding(ds, resolve_columns(ds)[0])
    trained_on = (getattr(model, 'mislas_config', {}) or {}).get('image_encoding')
    if trained_on and trained_on != encodings[split]:
        raise ZooError(f'{folder} was trained on images stored as {trained_on} but {dataset} holds '
                       f'{encodings[split]}: pass the copy it was trained on')


def build(runs: str, dataset: str, only: Optional[Sequence[str]] = None, zoo_dir: Optional[Path] = None,
          entries: Optional[Sequence[ZooEntry]] = None, dataset_id: str = DATASET_ID,
          limitations: Optional[Sequence[str]] = None) -> List[Path]:
    """Publish each entry whose run folder exists under ``runs`` into ``zoo_dir/<name>`` (atomically).

    Every selected run is checked before any is evaluated: it must have been trained on images encoded
    like ``dataset``'s (a model trained on a JPEG copy is not re-measured on the PNG one, or the reverse)."""
    from .evaluation import evaluate
    from .hub import check_card_matches_metrics, load_model, save_hub_folder

    zoo_dir = Path(zoo_dir or ZOO_DIR)
    plan = []
    encodings: Dict[str, str] = {}
    for entry in entries or ZOO:
        if only and entry.name not in only:
            continue
        source = Path(runs) / (entry.source or '')
        if not entry.source or not (source / 'model.safetensors').is_file():
            continue
        run_metrics = json.loads((source / 'metrics.json').read_text())
        split = run_metrics.get('split', 'test')
        model = load_model(str(source))
        _check_encoding(model, source, dataset, split, encodings)
        plan.append((entry, source, model, run_metrics, split))
    written = []
    for entry, source, model, run_metrics, split in plan:
        meta = public_meta(getattr(model, 'mislas_config', {}) or {}, dataset_id, encoding=encodings[split])
        model.mislas_config = meta
        cfg = {k: v for k, v in model.pretrained_cfg.items() if k != 'url'}
        cfg.update(tag=entry.tag, hf_hub_id=entry.hub_id)
        model.pretrained_cfg = model.default_cfg = cfg
        report = evaluate(model, dataset, split=split, dataset_name=dataset_id)
        for key in ('runtime', 'train_time_s'):
            if key in run_metrics:
                report[key] = run_metrics[key]
        run = (entry.source or '').split('/')[0]
        lines = card_limitations(entry.name, meta, report['top1'], run) + list(limitations or [])
        target = save_hub_folder(model, zoo_dir / entry.name, label_names=list(cfg.get('label_names') or []),
                                 mislas=meta, metrics=report,
                                 card_context={'hub_id': entry.hub_id, 'dataset_id': dataset_id,
                                               'title': f'{entry.name}: {entry.description}',
                                               'limitations': lines})
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
    b.add_argument('--limitation', action='append', default=[],
                   help='a line added to the cards\' limitations (the standard ones come from card_limitations)')
    args = parser.parse_args(argv)
    from .data.hf import DataError
    try:
        if args.command == 'build':
            for path in build(args.runs, args.dataset, only=args.only, limitations=args.limitation):
                print(f'wrote {path}')
            return 0
        if args.verify:
            rows = verify(args.verify)
            for r in rows:
                print(f'{r["name"]}: top-1 {100 * r["top1"]:.2f}% (card {100 * r["card_top1"]:.2f}%), '
                      f'ECE {100 * r["ece"]:.2f}% (card {100 * r["card_ece"]:.2f}%): '
                      f'{"OK" if r["ok"] else "MISMATCH"}')
            return 0 if all(r['ok'] for r in rows) else 1
    except (ZooError, DataError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(markdown_table())
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
