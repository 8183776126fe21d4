"""Command line: evaluate any model source on a data set split, write metrics.json + reliability.png.

    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID [--split test] [--out DIR]
    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID --test-imbalance 50 --test-profile backward
    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID --shift-table [50,25,10,5,2]
    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID --held-out     # the model's own validation split

SOURCE: a zoo name, a Hub folder, local-dir:PATH or hf-hub:ORG/NAME. The class groups use the
training counts recorded in the model's config.json (``mislas.class_counts``). A model recorded as
trained on images stored otherwise than the data set's (original pixels against a JPEG copy) is
evaluated with a one-line warning naming both encodings. --held-out evaluates the validation images
the model's training run held out of the training split (--split names that split, default train),
rebuilt from config.json and checked against its ``val_sha256``: the split to choose models,
epochs and post-hoc steps on, never the test split. metrics.json's ``wall_time_s`` /
``images_per_s`` cover the whole evaluation, from reading the split to the report.

Shifted test distributions (test-agnostic protocol of LADE / SADE): with --test-imbalance R > 1
the model is tested on a long-tailed subset of the (balanced) test split: the classes in training
frequency order keep floor(n * R ** (-i / (K - 1))) of their n test images (forward), or the
reverse (backward: the rarest training class keeps all n); --test-seed picks the images. R must lie
in [1, n]. --shift-table runs the model once on the whole split and prints top-1 and ECE for
forward R, uniform and backward R for each listed R (default 50,25,10,5,2; SADE's table); with
--out it also writes shifts.json (one report per test distribution).
"""
from __future__ import annotations

# The command line only (arguments, messages, files written); the evaluation itself is
# mislas_timm/evaluation.py. The docstring above is the --help text, so it names the documented command.

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ['format_shift_table', 'main']


def _ratios(text: str) -> list:
    from ..data.label_shift import check_test_shift

    values = [v for v in text.replace(' ', '').split(',') if v]
    if not values:
        raise ValueError('--shift-table needs a comma-separated list of test imbalance factors, e.g. 50,10,2')
    return [check_test_shift(v, 'forward') for v in values]


def _imbalance(text: str) -> float:
    from ..data.label_shift import check_test_shift

    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'--test-imbalance must be a number >= 1 (N_max / N_min of the test set), '
                         f'got {text!r}') from None
    if not value >= 1:
        raise ValueError(f'--test-imbalance must be >= 1 (N_max / N_min of the test set; 1 is the balanced test), '
                         f'got {text}')
    return check_test_shift(value, 'forward')


def format_shift_table(reports) -> str:
    """The shift table: one column per test distribution, rows images / top-1 (%) / ECE (%)."""
    names = list(reports)
    width = max([11] + [len(n) + 2 for n in names])
    lines = ['test distribution'.ljust(18) + ''.join(n.rjust(width) for n in names)]
    lines.append('images'.ljust(18) + ''.join(str(reports[n]['num_samples']).rjust(width) for n in names))
    lines.append('top-1 (%)'.ljust(18) + ''.join(f'{100 * reports[n]["top1"]:.2f}'.rjust(width) for n in names))
    lines.append('ECE (%)'.ljust(18) + ''.join(f'{100 * reports[n]["ece"]:.2f}'.rjust(width) for n in names))
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m mislas_timm.evaluate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', help='zoo name, Hub folder, local-dir:PATH or hf-hub:ORG/NAME')
    p.add_argument('--dataset', required=True, help='Hub id or local data set folder')
    p.add_argument('--split', help='split to evaluate (default: test; with --held-out: the training split the '
                                   'validation images were held out of, default train)')
    p.add_argument('--held-out', action='store_true',
                   help="evaluate the validation images the model's training run held out (rebuilt from "
                        'config.json, checked against its val_sha256)')
    p.add_argument('--out', help='folder for metrics.json and reliability.png (default: print only)')
    p.add_argument('--image-column', help='image column (default: img / image / ...)')
    p.add_argument('--label-column', help='label column (default: label / fine_label / ...)')
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--max-samples', type=int, help='evaluate the first N samples only')
    p.add_argument('--test-imbalance', default='1', metavar='R',
                   help='test on a long-tailed subset with N_max / N_min = R (default 1: the whole split)')
    p.add_argument('--test-profile', default='forward', metavar='{forward,backward}',
                   help='forward: frequent training classes keep the most test images; backward: the reverse')
    p.add_argument('--test-seed', type=int, default=0, help='seed of the shifted subset (default 0)')
    p.add_argument('--shift-table', nargs='?', const='50,25,10,5,2', metavar='R,R,...',
                   help='print top-1 / ECE on forward R, uniform and backward R test sets from one pass '
                        '(default R: 50,25,10,5,2)')
    args = p.parse_args(argv)

    from ..data.hf import DataError
    from ..data.label_shift import check_test_shift, shift_name
    from ..evaluation import default_shifts, evaluate, evaluate_shifts, one_line_warnings
    from ..hub import HubError, load_model, write_json_atomic
    from ..plots import reliability_diagram_png

    def fail(err) -> int:
        text = ' '.join(str(err).split()) or type(err).__name__
        print(f'evaluate: error: {text}', file=sys.stderr)
        return 2

    try:
        imbalance = _imbalance(args.test_imbalance)
        check_test_shift(imbalance, args.test_profile)
        shifts = default_shifts(_ratios(args.shift_table)) if args.shift_table is not None else None
    except ValueError as err:
        return fail(err)
    if args.held_out and (shifts is not None or imbalance != 1):
        return fail('--held-out evaluates the balanced validation split as it was held out; drop '
                    '--test-imbalance / --shift-table')
    split = args.split or ('train' if args.held_out else 'test')
    kwargs = dict(split=split, image_column=args.image_column, label_column=args.label_column,
                  batch_size=args.batch_size, max_samples=args.max_samples)
    shift_reports = None
    dataset = args.dataset
    try:
        model = load_model(args.source)
        if args.held_out:
            from ..calibration import held_out_validation

            with one_line_warnings('evaluate'):
                dataset, _, image_column, label_column = held_out_validation(
                    model, args.dataset, split_train=split, image_column=args.image_column,
                    label_column=args.label_column)
            kwargs.update(split=None, image_column=image_column, label_column=label_column, dataset_name=args.dataset)
        with one_line_warnings('evaluate'):  # e.g. a model measured on a JPEG copy of its data: one line
            if shifts is not None:
                main_name = shift_name(imbalance, args.test_profile)
                if main_name not in {shift_name(r, prof) for r, prof in shifts}:
                    shifts.append((imbalance, args.test_profile))
                shift_reports = evaluate_shifts(model, dataset, shifts, seed=args.test_seed, **kwargs)
                report = shift_reports[main_name]
            else:
                report = evaluate(model, dataset, test_imbalance=imbalance, test_profile=args.test_profile,
                                  test_seed=args.test_seed, **kwargs)
    except (HubError, DataError, ValueError) as err:
        return fail(err)
    if args.held_out:  # name what was measured: not a split of the data set but the rows held out of one
        report.update(split=f'{split}[held-out]', val_sha256=model.mislas_config['val_sha256'])
    keys = ['top1', 'top5', 'ece', 'mce', 'nll', 'brier', 'num_samples'] + (['split'] if args.held_out else [])
    if imbalance != 1:
        keys += ['test_imbalance', 'test_profile', 'test_seed', 'test_class_counts']
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    if shift_reports is not None:
        print(format_shift_table(shift_reports))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / 'metrics.json', report)
        png = reliability_diagram_png(report['reliability'], report['ece'], report['top1'], title=args.source)
        tmp = out / '.reliability.png.tmp'
        tmp.write_bytes(png)
        tmp.replace(out / 'reliability.png')
        if shift_reports is not None:
            write_json_atomic(out / 'shifts.json', shift_reports)
            print(f'wrote {out / "metrics.json"}, {out / "reliability.png"} and {out / "shifts.json"}')
        else:
            print(f'wrote {out / "metrics.json"} and {out / "reliability.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
