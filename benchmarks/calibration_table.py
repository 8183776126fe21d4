"""The long-tailed calibration benchmark: MiSLAS against the cheap answers, on one backbone, one table.

    python benchmarks/calibration_table.py RUNS --dataset ../shared/datasets/cifar10 [--json OUT.json]

RUNS holds the run folders of ``benchmarks/paper_runs.sh`` (the full-recipe CIFAR-10-LT IF100
ResNet-32 runs). Every post-hoc method is fitted on the validation split its model's training run
held out (``mislas_timm.calibration.fit_on_validation``) and folded into the final linear layer;
the test split is only measured. One prediction pass per model over the full test split gives the
balanced columns and, by subsetting its logits, the forward-50 and backward-50 test distributions
(``mislas_timm.evaluate_shifts``). Rows whose run folder does not exist yet are listed as missing.
"""
import argparse
import json
import sys
from pathlib import Path

import mislas_timm
from mislas_timm.calibration import fit_on_validation

# (row, run folder under RUNS, post-hoc method or None)
ROWS = (
    ('CE', 'if100-ce/stage1', None),
    ('CE + temperature scaling', 'if100-ce/stage1', 'temperature'),
    ('CE + tau-norm', 'if100-ce/stage1', 'tau_norm'),
    ('CE + logit adjustment', 'if100-ce/stage1', 'logit_adjust'),
    ('mixup', 'if100-mixup/stage1', None),
    ('mixup + temperature scaling', 'if100-mixup/stage1', 'temperature'),
    ('mixup + tau-norm', 'if100-mixup/stage1', 'tau_norm'),
    ('mixup + logit adjustment', 'if100-mixup/stage1', 'logit_adjust'),
    ('cRT (mixup stage 1)', 'if100-crt/stage2', None),
    ('LWS (mixup stage 1)', 'if100-lws/stage2', None),
    ('MiSLAS', 'if100-mixup/stage2', None),
    ('MiSLAS + temperature scaling', 'if100-mixup/stage2', 'temperature'),
    ('Balanced Softmax + mixup (stage 1)', 'if100-bsm-mixup/stage1', None),
    ('Balanced Softmax + mixup + temperature scaling', 'if100-bsm-mixup/stage1', 'temperature'),
    ('Balanced Softmax + mixup, MiSLAS stage 2', 'if100-bsm-mixup/stage2', None),
)
SHIFTS = [(1.0, 'forward'), (50.0, 'forward'), (50.0, 'backward')]
COLUMNS = ('top-1', 'ECE', 'adaptive ECE', 'classwise ECE', 'NLL', 'head', 'med', 'tail',
           'fwd-50 top-1', 'fwd-50 ECE', 'bwd-50 top-1', 'bwd-50 ECE')


def row_values(reports):
    """The table's columns (percent, NLL as is) from the uniform / forward-50 / backward-50 reports."""
    uniform, forward, backward = reports['uniform'], reports['forward-50'], reports['backward-50']
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return [pct(uniform['top1']), pct(uniform['ece']), pct(uniform['adaptive_ece']), pct(uniform['classwise_ece']),
            uniform['nll'], pct(uniform['head_top1']), pct(uniform['med_top1']), pct(uniform['tail_top1']),
            pct(forward['top1']), pct(forward['ece']), pct(backward['top1']), pct(backward['ece'])]


def markdown(rows):
    lines = ['| model | ' + ' | '.join(COLUMNS) + ' | fitted on validation |',
             '|---|' + '---|' * (len(COLUMNS) + 1)]
    for row in rows:
        if row['values'] is None:
            lines.append(f'| {row["name"]} | ' + ' | '.join(['missing'] * len(COLUMNS)) + f' | {row["note"]} |')
            continue
        cells = [f'{v:.3f}' if i == 4 else ('-' if v is None else f'{v:.2f}') for i, v in enumerate(row['values'])]
        lines.append(f'| {row["name"]} | ' + ' | '.join(cells) + f' | {row["note"]} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs')
    p.add_argument('--dataset', required=True, help='CIFAR-10 (local folder or uoft-cs/cifar10)')
    p.add_argument('--json', help='also write the rows (and the full reports) to this JSON file')
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--run-suffix', default='',
                   help='read RUNS/<run><suffix> instead: --run-suffix=-png for the paper_runs.sh NAME-png runs')
    args = p.parse_args(argv)
    rows = []
    for name, run, method in ROWS:
        run_name, _, stage = run.partition('/')
        run = f'{run_name}{args.run_suffix}/{stage}'
        folder = Path(args.runs) / run
        if not (folder / 'model.safetensors').is_file():
            rows.append({'name': name, 'values': None, 'note': f'{run} not trained yet'})
            continue
        model = mislas_timm.load_model(str(folder))
        note = '-'
        if method:
            model, fitted, val_idx, _ = fit_on_validation(model, method, args.dataset, batch_size=args.batch_size)
            value = f'T = {fitted["temperature"]:.3f}' if 'temperature' in fitted else f'tau = {fitted["tau"]:g}'
            note = f'{value} ({len(val_idx)} images)'
        reports = mislas_timm.evaluate_shifts(model, args.dataset, shifts=SHIFTS, batch_size=args.batch_size)
        rows.append({'name': name, 'run': run, 'method': method, 'values': row_values(reports), 'note': note,
                     'reports': reports})
        print(f'{name}: top-1 {rows[-1]["values"][0]:.2f}%, ECE {rows[-1]["values"][1]:.2f}%', file=sys.stderr,
              flush=True)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
