"""Model cards rendered from metrics.json (numbers in percent), and the check that both agree."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import yaml

from ..metrics import summarize_seed_runs

__all__ = ['CardError', 'render_card', 'card_front_matter', 'check_card_matches_metrics', 'pct', 'seeds_section',
           'mean_sd']

CITATION = """@inproceedings{zhong2021mislas,
  title     = {Improving Calibration for Long-Tailed Recognition},
  author    = {Zhong, Zhisheng and Cui, Jiequan and Liu, Shu and Jia, Jiaya},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""


class CardError(ValueError):
    """A model card that disagrees with its metrics.json."""


def pct(value: Optional[float], digits: int = 2) -> Optional[float]:
    """A fraction as a percentage rounded for display (None stays None)."""
    return None if value is None else round(100.0 * float(value), digits)


def _fmt(value: Optional[float]) -> str:
    return 'n/a (no class in group)' if value is None else f'{pct(value):.2f}'


def _stage1_command(mislas: Dict[str, Any]) -> list:
    """For a stage-2 model, the command that made its stage 1 (first), as a comment plus command."""
    stage1 = mislas.get('stage1') or {}
    if not stage1.get('command'):
        return []
    return ['# stage 1', stage1['command'], '# stage 2']


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return 'not recorded'
    minutes = float(seconds) / 60
    return f'{minutes / 60:.2f} h' if minutes >= 90 else f'{minutes:.1f} min'


def _stage_rows(name: str, info: Dict[str, Any]) -> list:
    runtime = info.get('runtime') or {}
    recipe = info.get('recipe') or {}
    precision = runtime.get('mixed_precision')
    precision = {'no': 'fp32', None: 'not recorded'}.get(precision, precision)
    if recipe.get('loss') == 'ce':  # the label-aware smoothing settings do nothing with a plain CE loss
        recipe = {k: v for k, v in recipe.items() if not k.startswith(('smooth_', 'las_'))}
    # runs recorded before runtime.device_name learnt the singular wrote "(1 threads)"
    device = (info.get('device') or 'not recorded').replace('(1 threads)', '(1 thread)')
    return [f'| {name} | {_duration(info.get("train_time_s"))} | {device} '
            f'| {precision} | {", ".join(f"{k} {v}" for k, v in recipe.items())} |']


def _training_section(mislas: Dict[str, Any], command: str) -> list:
    """Data, per-stage recipe / wall time / device, and the commands (stage 1 first for a stage-2 model)."""
    encoding = f' ({mislas["image_encoding"]})' if mislas.get('image_encoding') else ''
    data_note = mislas.get('data_note') or f'`{mislas.get("dataset")}`{encoding}'
    lines = [
        f'- preset: `{mislas.get("preset", "n/a")}`; stage: {mislas.get("stage", "n/a")}; training seed '
        f'{mislas.get("seed", "n/a")}',
        f'- data: {data_note}; long-tail view with imbalance factor {mislas.get("imb_factor")}, data seed '
        f'{mislas.get("data_seed")}, kept-indices sha256 `{mislas.get("split_sha256")}`',
        f'- training images per class: {mislas.get("class_counts")}',
    ]
    if mislas.get('val_sha256'):
        lines.append(f'- validation: {mislas.get("val_per_class")} images per class held out of the training split '
                     f'(never the test split), sha256 `{mislas["val_sha256"]}`')
    selection = mislas.get('stage2_selection')
    if selection:  # stage 2's label-aware smoothing, chosen per data set (mislas_timm.stage2_selection)
        tried = '; '.join(f'{c["smooth_head"]:g} / {c["smooth_tail"]:g}: {_fmt(c["val_top1"])} / {_fmt(c["val_ece"])} '
                          f'/ {c["val_nll"]:.4f}' for c in selection['candidates'])
        chosen = selection['chosen']
        lines.append(f'- stage 2 smoothing eps_1 / eps_K chosen on the validation split by the lowest NLL (ties: the '
                     f'smaller eps_1): **{chosen["smooth_head"]:g} / {chosen["smooth_tail"]:g}**; candidates '
                     f'(validation top-1 % / ECE % / NLL): {tried}')
    stages = []
    if mislas.get('stage') == 2 and mislas.get('stage1'):
        stages.append(('stage 1', mislas['stage1']))
    stages.append((f'stage {mislas.get("stage", "?")}', mislas))
    lines += ['', '| stage | wall time | device | precision | recipe |', '|---|---|---|---|---|']
    for name, info in stages:
        lines += _stage_rows(name, info)
    lines += _posthoc_lines(mislas)
    posthoc_command = (mislas.get('posthoc') or {}).get('command')
    after = ['# post-hoc, fitted on the validation split', posthoc_command] if posthoc_command else []
    lines += ['', 'Commands (run from a clone of mislas-timm; `--resume` continues a stopped run):', '',
              '```bash', *_stage1_command(mislas), command, *after, '```', '']
    return lines


def mean_sd(stats: Dict[str, Optional[float]], scale: float = 100.0, digits: int = 2) -> str:
    """``mean +- SD`` of one key of :func:`mislas_timm.metrics.summarize_seed_runs` (``scale`` 100: in %)."""
    if stats['mean'] is None:
        return 'n/a'
    sd = 'n/a' if stats['sd'] is None else f'{scale * stats["sd"]:.{digits}f}'
    return f'{scale * stats["mean"]:.{digits}f} +- {sd}'


def seeds_section(metrics: Dict[str, Any], mislas: Dict[str, Any]) -> List[str]:
    """"Over training seeds": one row per seed of metrics.json's ``seed_runs`` and their mean +- SD
    (top-1 and ECEs in %); nothing for fewer than two seeds."""
    runs = sorted(metrics.get('seed_runs') or [], key=lambda run: run['seed'])
    if len(runs) < 2:
        return []
    shipped = mislas.get('seed')
    summary = summarize_seed_runs(runs)

    def rate(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{100 * value:.2f}'

    lines = ['## Over training seeds', '',
             f'The same recipe trained with {len(runs)} training seeds on the same long-tail split (data seed '
             f'{mislas.get("data_seed")}), each measured like the results above on the same '
             f'{metrics["num_samples"]} images of the `{metrics.get("split", "test")}` split (numbers in %, NLL in nats; SD: the sample standard '
             f'deviation over seeds). The weights here are seed {shipped}\'s.', '',
             '| training seed | top-1 | ECE | adaptive ECE | NLL |', '|---|---|---|---|---|']
    for run in runs:
        seed = f'{run["seed"]} (these weights)' if run['seed'] == shipped else f'{run["seed"]}'
        nll = 'n/a' if run.get('nll') is None else f'{run["nll"]:.4f}'
        lines.append(f'| {seed} | {rate(run.get("top1"))} | {rate(run.get("ece"))} '
                     f'| {rate(run.get("adaptive_ece"))} | {nll} |')
    lines.append(f'| mean +- SD | {mean_sd(summary["top1"])} | {mean_sd(summary["ece"])} '
                 f'| {mean_sd(summary["adaptive_ece"])} | {mean_sd(summary["nll"], scale=1.0, digits=4)} |')
    return lines + ['']


def _default_summary(mislas: Dict[str, Any]) -> str:
    """What the model is, from the recipe recorded in config.json."""
    recipe = mislas.get('recipe') or {}
    if mislas.get('stage') == 2:
        head = {'mislas': 'the MiSLAS head z = diag(s)(W + dW)^T x', 'lws': 'a learnable weight scaling (LWS) head',
                'crt': 'a re-initialised classifier (cRT)'}.get(recipe.get('head'), 'a retrained classifier')
        loss = 'label-aware smoothing' if recipe.get('loss', 'las') == 'las' else 'cross-entropy'
        shift = 'on' if recipe.get('shift_bn') else 'off'
        return (f'A long-tailed image classifier after MiSLAS stage 2 (Zhong et al., CVPR 2021): backbone frozen, '
                f'{head} retrained on class-balanced batches with {loss}, shift-BN {shift}. The head is folded '
                'into one linear layer, so this is an ordinary timm model.')
    if mislas.get('stage') == 1:
        if recipe.get('loss') == 'balanced_softmax':
            mixup = f' with mixup (alpha {recipe["mixup_alpha"]})' if recipe.get('mixup_alpha') else ''
            return ('A long-tailed image classifier trained on instance-balanced batches with the Balanced Softmax '
                    f'loss (Ren et al., NeurIPS 2020: the logits shifted by the log class prior in training only){mixup}; '
                    'the MiSLAS stage 1 with that loss, no stage 2.')
        if recipe.get('mixup_alpha'):
            return (f'A long-tailed image classifier after MiSLAS stage 1 (Zhong et al., CVPR 2021): instance-balanced '
                    f'sampling, cross-entropy with mixup (alpha {recipe["mixup_alpha"]}); no stage 2.')
        return ('A long-tailed image classifier trained with plain cross-entropy on instance-balanced batches '
                '(no mixup, no stage 2): the over-confident baseline MiSLAS improves on.')
    return 'A long-tailed image classifier (mislas-timm).'


POSTHOC_NAMES = {'temperature': 'temperature scaling', 'tau_norm': 'tau-normalisation',
                 'logit_adjust': 'post-hoc logit adjustment'}


def _posthoc_value(posthoc: Dict[str, Any]) -> str:
    return f'T = {posthoc["temperature"]:.4f}' if 'temperature' in posthoc else f'tau = {posthoc.get("tau")}'


def posthoc_sentence(mislas: Dict[str, Any]) -> str:
    """What a recorded post-hoc step did (``mislas.posthoc`` of python -m mislas_timm.calibrate), or ''."""
    posthoc = mislas.get('posthoc') or {}
    if not posthoc.get('method'):
        return ''
    return (f' Then {POSTHOC_NAMES.get(posthoc["method"], posthoc["method"])} ({_posthoc_value(posthoc)}), fitted on '
            f'the {posthoc.get("num_val")} held-out validation images (never the test split) and folded into the '
            'final linear layer, so this is an ordinary timm model.')


def _posthoc_lines(mislas: Dict[str, Any]) -> list:
    posthoc = mislas.get('posthoc') or {}
    if not posthoc.get('method'):
        return []
    before, after = posthoc.get('val_before') or {}, posthoc.get('val_after') or {}
    scores = (f' (validation NLL {before["nll"]:.4f} -> {after["nll"]:.4f})'
              if 'nll' in before and 'nll' in after else '')
    return [f'- post-hoc: {POSTHOC_NAMES.get(posthoc["method"], posthoc["method"])}, {_posthoc_value(posthoc)}, fitted '
            f'on {posthoc.get("num_val")} validation images{scores}, folded into the classifier']


def render_card(config: Dict[str, Any], metrics: Dict[str, Any], context: Dict[str, Any]) -> str:
    """The README.md of a Hub folder.

    context keys (all optional): ``hub_id``, ``title``, ``summary``, ``preset``, ``command``,
    ``dataset_id`` (for the ``datasets`` front-matter field), ``limitations`` (list of strings).
    """
    arch = config['architecture']
    mislas = config.get('mislas') or {}
    hub_id = context.get('hub_id') or f'ORG/{arch}'
    dataset_name = metrics.get('dataset') or mislas.get('dataset') or 'unknown'
    dataset_id = context.get('dataset_id') or mislas.get('dataset_id') or dataset_name
    title = context.get('title') or f'{arch} trained with MiSLAS'
    front = {
        'library_name': 'timm',
        'license': 'apache-2.0',
        'pipeline_tag': 'image-classification',
        'tags': ['image-classification', 'timm', 'long-tailed', 'calibration', 'mislas'],
        'datasets': [dataset_id],
        'metrics': ['accuracy', 'ece'],
        'model-index': [{
            'name': hub_id.split('/')[-1],
            'results': [{
                'task': {'type': 'image-classification', 'name': 'Image Classification'},
                'dataset': {'name': dataset_name, 'type': dataset_id, 'split': metrics.get('split', 'test')},
                'metrics': [
                    {'type': 'accuracy', 'name': 'Top-1 accuracy (%)', 'value': pct(metrics['top1'])},
                    {'type': 'ece', 'name': 'Expected calibration error, 15 bins (%)', 'value': pct(metrics['ece'])},
                ],
            }],
        }],
    }
    limitations = context.get('limitations') or []
    recipe = context.get('command') or mislas.get('command') or 'see the mislas-timm README'
    lines = [
        '---', yaml.safe_dump(front, sort_keys=False).rstrip(), '---', '',
        f'# {title}', '',
        context.get('summary') or _default_summary(mislas) + posthoc_sentence(mislas),
        '',
        '## Results on the test split', '',
        f'Measured once, after the last epoch, on {metrics["num_samples"]} images of the '
        f'`{metrics.get("split", "test")}` split of `{dataset_name}` (numbers in %); '
        '`python -m mislas_timm.evaluate` reproduces them.', '',
        '| top-1 | top-5 | ECE | MCE | NLL | Brier |',
        '|---|---|---|---|---|---|',
        f'| {_fmt(metrics["top1"])} | {_fmt(metrics["top5"])} | {_fmt(metrics["ece"])} | {_fmt(metrics["mce"])} '
        f'| {metrics["nll"]:.4f} | {metrics["brier"]:.4f} |', '',
        'By training-set frequency (many > 100, medium 20-100, few < 20 training images per class) '
        'and by frequency rank (head / med / tail):', '',
        '| many | medium | few | head | med | tail |',
        '|---|---|---|---|---|---|',
        '| ' + ' | '.join(_fmt(metrics.get(k)) for k in
                         ('many_top1', 'medium_top1', 'few_top1', 'head_top1', 'med_top1', 'tail_top1')) + ' |', '',
        '![Reliability diagram](reliability.png)', '',
        *seeds_section(metrics, mislas),
        '## Usage', '',
        'The architecture is registered by `mislas_timm`: import it before `timm.create_model`, '
        'otherwise timm fails with "Unknown model".', '',
        '```python',
        'import mislas_timm  # registers the MiSLAS models with timm',
        'import timm',
        'import torch',
        '',
        f'model = timm.create_model("hf-hub:{hub_id}", pretrained=True).eval()',
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        'image = torch.rand(3, *config["input_size"][1:])  # or transform(PIL.Image.open(path).convert("RGB"))',
        'probs = model(image.unsqueeze(0)).softmax(dim=-1)',
        'print(model.pretrained_cfg["label_names"][int(probs.argmax())], float(probs.max()))',
        '```', '',
        '## Training', '',
        *_training_section(mislas, recipe),
        '## Limitations', '',
    ]
    seeds = sorted(run['seed'] for run in metrics.get('seed_runs') or [])
    limitations = limitations or [
        (f'{len(seeds)} training runs, seeds {", ".join(map(str, seeds))}; the weights here are seed '
         f'{mislas.get("seed")}\'s.' if len(seeds) >= 2 else 'One training run with one seed: no confidence intervals.'),
        'Reported at the last epoch; the test split was not used to select the model.',
        'Calibration is measured on the test split of the training distribution\'s classes only.',
    ]
    lines += [f'- {item}' for item in limitations]
    lines += ['', '## Citation', '', '```bibtex', CITATION, '```', '',
              'Code and weights: Apache-2.0. Produced with [mislas-timm](https://github.com/mislas-timm/mislas-timm).', '']
    return '\n'.join(lines)


def card_front_matter(card: str) -> Dict[str, Any]:
    if not card.startswith('---\n'):
        raise CardError('model card has no YAML front matter')
    end = card.index('\n---', 4)
    return yaml.safe_load(card[4:end])


def check_card_matches_metrics(card: str, metrics: Dict[str, Any]) -> None:
    """Raise ``CardError`` unless the card's model-index top-1 and ECE equal metrics.json's (in %)."""
    front = card_front_matter(card)
    try:
        values = {m['type']: m['value'] for m in front['model-index'][0]['results'][0]['metrics']}
    except (KeyError, IndexError, TypeError):
        raise CardError('model card front matter has no model-index results') from None
    for key, metric_key in (('accuracy', 'top1'), ('ece', 'ece')):
        expected = pct(metrics[metric_key])
        if values.get(key) != expected:
            raise CardError(f'model card says {key} = {values.get(key)}% but metrics.json says {expected}%; '
                            're-render the card from metrics.json (python -m mislas_timm.hub card FOLDER)')

