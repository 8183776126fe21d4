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
    python -m mislas_timm.zoo seeds NAME RUN_STAGE2_FOLDER [...] --dataset PATH [--keep-recorded]  # other seeds

``build`` turns train.py run folders (``RUNS/<run>/stage<N>``, see ``benchmarks/paper_runs.sh``)
into publishable zoo folders: the zoo tag and Hub id in config.json, no path of the training
machine anywhere (the data set is named by its Hub id, commands are printed as a user types them),
metrics re-measured by the current evaluator, the card and reliability diagram rendered from them.

``seeds`` records the same recipe trained with other training seeds in a shipped folder's metrics.json
(``seed_runs``: the shipped weights' own numbers and each other run's, measured on the same split) and
re-renders its card; the shipped weights stay as they are.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .metrics import summarize_seed_runs
from .models.pretrained_tags import HUB_ORG, PRETRAINED_TAGS, shipped_folder, zoo_dirs

__all__ = ['ZooEntry', 'ZOO', 'ZOO_DIR', 'PAPER', 'names', 'get', 'shipped', 'table', 'markdown_table', 'verify',
           'build', 'add_seed_runs', 'recipe_difference', 'public_command', 'public_meta', 'stage1_epochs', 'data_note',
           'card_limitations', 'ZooError']

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
# The same, for a model recorded over several training seeds (metrics.json seed_runs).
SEEDS_GAP_NOTE = ('The reference code reports its best test epoch where this card reports the last (BENCHMARKS.md, '
                  '"Where the gap is").')


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
    """One row per shipped model: name, hub_id, folder, description, top1, ece (fractions), paper (%), and
    ``seeds``: :func:`mislas_timm.metrics.summarize_seed_runs` of its ``seed_runs`` (None without)."""
    from .hub import read_hub_config

    rows = []
    for entry in shipped():
        metrics = entry.metrics() or {}
        mislas = read_hub_config(entry.folder).get('mislas') or {}
        rows.append({'name': entry.name, 'hub_id': entry.hub_id, 'folder': str(entry.folder),
                     'description': entry.description, 'top1': metrics.get('top1'), 'ece': metrics.get('ece'),
                     'paper': PAPER.get(entry.name), 'stage1_epochs': stage1_epochs(mislas),
                     'seeds': summarize_seed_runs(metrics['seed_runs']) if metrics.get('seed_runs') else None})
    return rows


def markdown_table() -> str:
    """The README table (numbers in percent, read from each folder's metrics.json; the paper's beside).

    A model recorded over two or more training seeds shows its own number, then the mean +- SD over the
    seeds: ``81.03 (80.85 +- 0.21, 3 seeds)``."""
    from .hub.card import mean_sd

    lines = ['| model | stage-1 epochs | top-1 (%) | ECE (%) | paper top-1 / ECE (%) | what it is |',
             '|---|---|---|---|---|---|']
    for row in table():
        top1 = f'{100 * row["top1"]:.2f}' if row['top1'] is not None else 'n/a'
        ece = f'{100 * row["ece"]:.2f}' if row['ece'] is not None else 'n/a'
        seeds = row.get('seeds')
        if seeds and seeds['top1']['n'] >= 2:
            top1 += f' ({mean_sd(seeds["top1"])}, {seeds["top1"]["n"]} seeds)'
            ece += f' ({mean_sd(seeds["ece"])}, {seeds["ece"]["n"]} seeds)'
        paper = row['paper']
        paper_cell = (f'{paper[0]:.1f} / ' + (f'{paper[1]:.2f}' if paper[1] is not None else '-')) if paper else '-'
        lines.append(f'| `{row["name"]}` | {row["stage1_epochs"] or "?"} | {top1} | {ece} | {paper_cell} '
                     f'| {row["description"]} |')
    return '\n'.join(lines)


def verify(dataset: str, tolerance: float = 1e-6) -> List[Dict]:
    """Re-run the evaluator on every shipped model; compare its top-1 / ECE with metrics.json.

    Every model is checked before any is evaluated: ``dataset`` must hold images encoded like the ones
    the model was trained and measured on, or the comparison would fail for a reason that is not the model's."""
    from .evaluation import DecodedSplit, evaluate
    from .hub import load_model

    checked = []
    splits: Dict[str, DecodedSplit] = {}  # each split read and decoded once for all the models
    for entry in shipped():
        saved = entry.metrics()
        if saved is None:
            raise ZooError(f'{entry.folder} has no metrics.json: rebuild it with python -m mislas_timm.zoo build')
        model = load_model(entry.name)
        split = saved.get('split', 'test')
        if split not in splits:
            splits[split] = DecodedSplit(dataset, split)
        _refuse_other_encoding(model, entry.folder, dataset, splits[split].encoding)
        checked.append((entry, model, saved, split))
    results = []
    for entry, model, saved, split in checked:
        report = evaluate(model, splits[split])
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
    # python -m mislas_timm.calibrate SOURCE ...: its one positional argument is a model source
    source_at = 3 if args[:3] == ['python', '-m', 'mislas_timm.calibrate'] else None
    out: List[str] = []
    replace_next = None
    for i, arg in enumerate(args):
        if replace_next is not None:
            out.append(replace_next(arg))
            replace_next = None
            continue
        if i == source_at and not arg.startswith('-'):
            out.append(_public_source(arg))
            continue
        flag, eq, value = arg.partition('=')
        handler = {'--dataset': lambda v: dataset_id, '--output-dir': _run_path, '--out': _run_path,
                   '--init': _public_source, '--set': _public_override,
                   **{f: lambda v: Path(v).name for f in _FILE_FLAGS}}.get(flag)
        if handler is not None and eq:
            out.append(f'{flag}={handler(value)}')
        else:
            out.append(arg)
            replace_next = handler
    return ' '.join(shlex.quote(a) for a in out)


def _public_posthoc(posthoc: Dict[str, Any], dataset_id: str) -> Dict[str, Any]:
    """A ``mislas.posthoc`` record (and the ones before it) with its source and command made public."""
    out = dict(posthoc)
    if isinstance(out.get('source'), str):
        out['source'] = _public_source(out['source'])
    out['command'] = public_command(out.get('command'), dataset_id)
    if isinstance(out.get('previous'), dict):
        out['previous'] = _public_posthoc(out['previous'], dataset_id)
    return out


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
    if isinstance(out.get('posthoc'), dict):  # python -m mislas_timm.calibrate's record: its paths too
        out['posthoc'] = _public_posthoc(out['posthoc'], dataset_id)
    if isinstance(out.get('stage1'), dict):
        out['stage1'] = public_meta(out['stage1'], dataset_id)
        out['stage1'].pop('data_note', None)
        out['stage1'].pop('dataset', None)
    return out


def card_limitations(name: str, meta: Dict[str, Any], top1: float, run: Optional[str] = None,
                     seed_runs: Optional[Sequence[Dict[str, Any]]] = None) -> List[str]:
    """The limitations every zoo card states, from the model's recorded facts, its measured top-1, the
    notes of the run folder it came from and, with two or more ``seed_runs`` (metrics.json's), the seeds."""
    counts = meta.get('class_counts') or []
    seeds = sorted(r['seed'] for r in seed_runs or [])
    if len(seeds) >= 2:
        lines = [f'{len(seeds)} training runs of the same recipe, seeds {", ".join(map(str, seeds))}; the shipped '
                 f'weights are seed {meta.get("seed")}\'s. One long-tail split (data seed {meta.get("data_seed")}): '
                 'the mean +- SD under "Over training seeds" is over training seeds only.']
    else:
        lines = [f'One training run with one seed ({meta.get("seed")}) and one long-tail split (data seed '
                 f'{meta.get("data_seed")}): no confidence intervals.']
    paper = PAPER.get(name)
    if paper and 100 * top1 < paper[0]:
        lossless = 'lossless' in (meta.get('image_encoding') or '')
        note = SEEDS_GAP_NOTE if lossless and len(seeds) >= 2 else GAP_NOTES[lossless]
        if len(seeds) >= 2:
            from .hub.card import mean_sd
            note += f' Over the {len(seeds)} seeds top-1 is {mean_sd(summarize_seed_runs(seed_runs)["top1"])}%.'
        lines.append(f'Top-1 is {paper[0] - 100 * top1:.1f} points below the paper\'s {paper[0]:.1f}%. ' + note)
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
    _refuse_other_encoding(model, folder, dataset, encodings[split])


def _refuse_other_encoding(model, folder: Path, dataset: str, found: Optional[str]) -> None:
    from .data.encoding import encoding_mismatch

    problem = encoding_mismatch(model, found, folder, dataset)
    if problem:
        raise ZooError(f'{problem}: pass the copy it was trained on')


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
        kept = _kept_seed_runs(zoo_dir / entry.name, meta, report)
        if kept:
            report['seed_runs'] = kept
        target = save_hub_folder(model, zoo_dir / entry.name, label_names=list(cfg.get('label_names') or []),
                                 mislas=meta, metrics=report,
                                 card_context=_card_context(entry, meta, report, dataset_id, limitations))
        check_card_matches_metrics((target / 'README.md').read_text(), report)
        written.append(zoo_dir / entry.name)
    return written


def _card_context(entry: ZooEntry, meta: Dict[str, Any], metrics: Dict[str, Any], dataset_id: str,
                  extra_limitations: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """What a zoo card is rendered with (build and add_seed_runs alike): the Hub id, the data set's id, the
    title and the standard limitations (card_limitations, the seeds included) followed by ``extra_limitations``."""
    run = (entry.source or '').split('/')[0]
    lines = card_limitations(entry.name, meta, metrics['top1'], run, metrics.get('seed_runs'))
    return {'hub_id': entry.hub_id, 'dataset_id': dataset_id, 'title': f'{entry.name}: {entry.description}',
            'limitations': lines + [line for line in extra_limitations or [] if line not in lines]}


def _seed_entry(seed: int, report: Dict[str, Any]) -> Dict[str, Any]:
    """One element of metrics.json's ``seed_runs`` (rates as fractions, as the report's)."""
    return {'seed': int(seed), **{key: report.get(key) for key in ('top1', 'ece', 'adaptive_ece', 'nll')}}


def _kept_seed_runs(target: Path, meta: Dict[str, Any], report: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """A rebuild keeps the ``seed_runs`` of the folder it replaces when that folder held the same seed's
    model of the same split (the shipped seed's entry re-measured; rerun ``zoo seeds`` to re-measure the
    others with the current evaluator); anything else starts without them."""
    try:
        old_metrics = json.loads((target / 'metrics.json').read_text())
        old_meta = json.loads((target / 'config.json').read_text()).get('mislas') or {}
    except (OSError, ValueError):
        return None
    runs = old_metrics.get('seed_runs') or []
    same = all(old_meta.get(k) == meta.get(k) for k in ('seed', 'preset', 'split_sha256')) and all(
        old_metrics.get(k) == report.get(k) for k in ('split', 'num_samples'))
    if not runs or not same or meta.get('seed') is None:
        return None
    return sorted([r for r in runs if r['seed'] != meta['seed']] + [_seed_entry(meta['seed'], report)],
                  key=lambda r: r['seed'])


# What must be equal for another run to count as the shipped model with another training seed: the
# model, the data and its long-tail split, and each stage's recipe. A key listed in _IF_RECORDED or of a
# recipe is compared where both runs recorded it (runs made before a key was recorded are not refused
# for it); paths, devices, precision and times are not the recipe.
_SAME_KEYS = ('architecture', 'num_classes', 'preset', 'stage', 'imb_factor', 'data_seed', 'split_sha256',
              'stage2_selection.candidates')
_IF_RECORDED = ('profile', 'n_max', 'val_per_class', 'val_sha256', 'rank_split')


def _recipe_facts(model) -> Dict[str, Any]:
    """The flat ``key: value`` facts of a loaded model that _SAME_KEYS / _IF_RECORDED / recipes name."""
    meta = getattr(model, 'mislas_config', {}) or {}
    facts = {'architecture': model.pretrained_cfg.get('architecture'), 'num_classes': model.num_classes,
             **{k: meta.get(k) for k in _SAME_KEYS[2:-1]}, **{k: meta[k] for k in _IF_RECORDED if k in meta}}
    selected = meta.get('stage2_selection')
    for prefix, info in (('recipe', meta), ('stage1.recipe', meta.get('stage1') or {})):
        for key, value in (info.get('recipe') or {}).items():
            if prefix == 'recipe' and selected and key in ('smooth_head', 'smooth_tail'):
                continue  # chosen per run on its validation split: the candidates are the recipe
            facts[f'{prefix}.{key}'] = value
    # always compared: a fixed smoothing (None) is another recipe than one chosen among candidates
    facts['stage2_selection.candidates'] = ([[c['smooth_head'], c['smooth_tail']] for c in selected['candidates']]
                                            if selected else None)
    # always compared: a post-hoc step (its value fitted per run on that run's validation split) is part of
    # the recipe, so a calibrated model's seeds are the calibrated folders of the other runs
    facts['posthoc.method'] = (meta.get('posthoc') or {}).get('method')
    return facts


def recipe_difference(shipped, other) -> Optional[Tuple[str, Any, Any]]:
    """The first fact ``(key, shipped's value, other's value)`` in which two loaded models' recorded recipes
    differ; None when ``other`` is ``shipped``'s recipe (the training seed may differ)."""
    mine, theirs = _recipe_facts(shipped), _recipe_facts(other)
    for key in list(_SAME_KEYS) + [k for k in mine if k not in _SAME_KEYS and k in theirs]:
        if mine.get(key) != theirs.get(key):
            return key, mine.get(key), theirs.get(key)
    return None


def _card_extra_limitations(folder: Path, entry: ZooEntry, meta: Dict[str, Any], metrics: Dict[str, Any]) -> List[str]:
    """The lines a card's Limitations section holds beyond the standard ones (zoo build --limitation), so
    re-rendering it keeps them."""
    card = (folder / 'README.md').read_text() if (folder / 'README.md').is_file() else ''
    section = card.split('\n## Limitations\n', 1)[1].split('\n## ', 1)[0] if '\n## Limitations\n' in card else ''
    standard = _card_context(entry, meta, metrics, DATASET_ID)['limitations']
    return [line[2:] for line in section.splitlines() if line.startswith('- ') and line[2:] not in standard]


def add_seed_runs(folder, runs: Sequence[str], dataset: str, dataset_id: str = DATASET_ID,
                  entry: Optional[ZooEntry] = None, keep_recorded: bool = False) -> Dict[str, Any]:
    """Record the same recipe trained with other training seeds in the zoo folder ``folder``: its
    metrics.json gets ``seed_runs`` (``[{seed, top1, ece, adaptive_ece, nll}, ...]``, fractions, sorted by
    seed: the folder's own weights from its metrics.json, each of ``runs`` measured with
    :func:`mislas_timm.evaluation.evaluate` on ``dataset``'s split of the folder's metrics, in fp32 as build
    does) and its card is re-rendered with build's context. The weights and the other metrics stay as they
    are; a second call replaces the list. Returns the new metrics.

    ``runs``: stage-2 Hub folders (or run folders) of the same recipe with other training seeds. Before any
    evaluation each is checked: another seed than the shipped one's and every other run's, the shipped model's
    recipe (:func:`recipe_difference`), trained on images stored like ``dataset``'s, and the split as large as
    the one the shipped metrics were measured on. ``entry``: the zoo entry (default: the one config.json names).
    ``keep_recorded``: keep the entries already in ``seed_runs`` for seeds not among ``runs`` (their run
    folders may be gone; they were measured the same way when recorded), instead of replacing the list."""
    from .data.hf import load_split
    from .evaluation import evaluate
    from .hub import HubError, check_card_matches_metrics, load_model, read_hub_config, render_card

    folder = Path(folder)
    if not (folder / 'metrics.json').is_file() or not (folder / 'config.json').is_file():
        raise ZooError(f'{folder} is not a zoo folder (no metrics.json / config.json): publish it first with '
                       'python -m mislas_timm.zoo build')
    if not runs:
        raise ZooError('no run folders given: pass the stage-2 folders of the other training seeds')
    config = read_hub_config(folder)
    meta = config.get('mislas') or {}
    saved = json.loads((folder / 'metrics.json').read_text())
    if entry is None:
        name = f'{config.get("architecture")}.{(config.get("pretrained_cfg") or {}).get("tag")}'
        entry = get(name)
        if entry is None:
            raise ZooError(f'{folder} holds {name}, not a zoo model: pass a folder that zoo build wrote')
    if not isinstance(meta.get('seed'), int):
        raise ZooError(f'{folder} records no training seed (config.json mislas.seed): rebuild it with '
                       'python -m mislas_timm.zoo build')
    split = saved.get('split', 'test')

    def load(source: str):
        try:
            return load_model(str(source))
        except HubError as err:
            raise ZooError(f'{source}: {err}') from None

    shipped = load(folder)
    seen = {meta['seed']: f'{folder} (the shipped model)'}
    kept = [dict(r) for r in saved.get('seed_runs') or [] if r['seed'] != meta['seed']] if keep_recorded else []
    planned = []
    for run in runs:
        model = load(run)
        seed = (model.mislas_config or {}).get('seed')
        if not isinstance(seed, int):
            raise ZooError(f'{run} records no training seed (config.json mislas.seed): pass a folder train.py wrote')
        if seed in seen:
            raise ZooError(f'{run} has training seed {seed}, as {seen[seed]}: pass one run per seed')
        difference = recipe_difference(shipped, model)
        if difference is not None:
            key, mine, theirs = difference
            raise ZooError(f'{run} is not {entry.name}\'s recipe with another seed: {key} is {theirs!r} there but '
                           f'{mine!r} in the shipped model; pass runs that differ in the training seed only')
        seen[seed] = str(run)
        planned.append((seed, run, model))
    encodings: Dict[str, str] = {}
    for source, model in [(folder, shipped)] + [(run, model) for _, run, model in planned]:
        _check_encoding(model, Path(source), dataset, split, encodings)
    size = len(load_split(dataset, split))
    if saved.get('num_samples') not in (None, size):
        raise ZooError(f'{dataset} has {size} images in its {split} split but {folder} was measured on '
                       f'{saved["num_samples"]}: pass the data set the shipped metrics came from')

    measured = [_seed_entry(meta['seed'], saved)]
    measured += [r for r in kept if r['seed'] not in {seed for seed, _, _ in planned}]
    for seed, run, model in planned:
        measured.append(_seed_entry(seed, evaluate(model, dataset, split=split, dataset_name=dataset_id)))
    extra = _card_extra_limitations(folder, entry, meta, saved)
    metrics = dict(saved, seed_runs=sorted(measured, key=lambda r: r['seed']))
    card = render_card(config, metrics, _card_context(entry, meta, metrics, dataset_id, extra))
    check_card_matches_metrics(card, metrics)
    # Both files are written in full beside their targets first, then renamed: never half a file.
    staged = [(folder / '.metrics.json.tmp', folder / 'metrics.json', json.dumps(metrics, indent=2) + '\n'),
              (folder / '.README.md.tmp', folder / 'README.md', card)]
    for tmp, _, text in staged:
        tmp.write_text(text)
    for tmp, target, _ in staged:
        tmp.replace(target)
    return metrics


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
    s = sub.add_parser('seeds', help='record other training seeds of a shipped model (metrics.json seed_runs, card)')
    s.add_argument('name', metavar='NAME', help='zoo name (or its tag) of the shipped model, e.g. '
                   'resnet32_cifar.cifar10_lt_if100_mislas')
    s.add_argument('runs', nargs='+', metavar='RUN_STAGE2_FOLDER',
                   help='stage-2 folder of the same recipe trained with another seed (runs/<run>/stage2)')
    s.add_argument('--dataset', required=True, help='the data set (local folder or Hub id) the shipped metrics '
                   'were measured on; each run is evaluated on its split')
    s.add_argument('--keep-recorded', action='store_true',
                   help='keep the seeds metrics.json already records (their run folders may be gone) and add or '
                        're-measure the ones given; default: the list becomes the shipped seed and the given runs')
    args = parser.parse_args(argv)
    from .data.hf import DataError
    try:
        if args.command == 'build':
            for path in build(args.runs, args.dataset, only=args.only, limitations=args.limitation):
                print(f'wrote {path}')
            return 0
        if args.command == 'seeds':
            entry = get(args.name) or next((e for e in ZOO if e.tag == args.name), None)
            if entry is None:
                raise ZooError(f'{args.name!r} is not a zoo name; pass one of {", ".join(names())}')
            if shipped_folder(entry.name) is None:
                raise ZooError(f'{entry.name} has no shipped folder: publish it first with python -m mislas_timm.zoo '
                               'build')
            metrics = add_seed_runs(entry.folder, args.runs, args.dataset, entry=entry,
                                    keep_recorded=args.keep_recorded)
            for run in metrics['seed_runs']:
                print(f'seed {run["seed"]}: top-1 {100 * run["top1"]:.2f}%, ECE {100 * run["ece"]:.2f}%')
            print(f'wrote {entry.folder / "metrics.json"} and {entry.folder / "README.md"}')
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
