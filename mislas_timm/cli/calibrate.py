"""Command line: post-hoc calibration of a trained model, fitted on its own validation split.

    python -m mislas_timm.calibrate SOURCE --method {temperature,tau_norm,logit_adjust} --dataset D --out DIR
        [--split-train train] [--split-test test] [--batch-size N]

SOURCE is any model source (zoo name, Hub or run folder, local-dir:PATH, hf-hub:ORG/NAME). The
validation split is the one the model's training run held out of the training split: it is
rebuilt from the ``mislas`` block of the model's config.json (imb_factor, profile, data_seed,
val_per_class) and the data set's training split, and its checksum must equal the recorded
``val_sha256``. The method is fitted there (never on the test split), folded into the final linear
layer (see :mod:`mislas_timm.calibration`) and the result written as a Hub folder to DIR: an
ordinary timm model whose config.json records ``mislas.posthoc`` and whose metrics.json / card
report the test split. The test split is used for that report only (read and decoded once for the
reports before and after). A model recorded as trained on images stored otherwise than the data
set's (original pixels against a JPEG copy) is calibrated with a one-line warning naming both.
"""
from __future__ import annotations

# The command line only (arguments, messages, the folder written); fitting on the model's held-out
# validation split and folding it into the classifier is mislas_timm/calibration.py (fit_on_validation
# and the equations). The docstring above is the --help text, so it names the documented command.

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..calibration import CalibrationError, fit_on_validation, require_validation_record, warn_encodings

__all__ = ['METHOD_NAMES', 'main']

METHOD_NAMES = {'temperature': 'temperature scaling', 'tau_norm': 'tau-normalisation',
                'logit_adjust': 'post-hoc logit adjustment'}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line on stderr, exit code 2 (argparse prints usage too)
        print(f'calibrate: error: {message}; see --help', file=sys.stderr)
        sys.exit(2)


def _parse(argv):
    p = _Parser(prog='python -m mislas_timm.calibrate', description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', help='zoo name, Hub folder, local-dir:PATH or hf-hub:ORG/NAME')
    p.add_argument('--method', required=True, help='temperature, tau_norm or logit_adjust')
    p.add_argument('--dataset', required=True, help='the training data set (Hub id or local folder) of the model')
    p.add_argument('--out', required=True, help='Hub folder to write the calibrated model to')
    p.add_argument('--split-train', default='train',
                   help='training split the validation split was held out of (default: train)')
    p.add_argument('--split-test', default='test', help='split to report on, never fitted on (default: test)')
    p.add_argument('--image-column', help='image column (default: img / image / ...)')
    p.add_argument('--label-column', help='label column (default: label / fine_label / ...)')
    p.add_argument('--tau-norm-bias', default='scale', choices=['scale', 'drop'],
                   help='tau_norm only: scale the bias with its row (default) or drop it as the Decoupling reference')
    p.add_argument('--batch-size', type=int, default=256)
    return p.parse_args(argv)


def _check_out(out: Path, source_name: str) -> None:
    if out.exists() and not out.is_dir():
        raise CalibrationError(f'--out {out} is a file; pass a folder')
    if out.is_dir() and any(out.iterdir()) and not (out / 'config.json').is_file():
        raise CalibrationError(f'--out {out} is a non-empty folder that is not a Hub folder; '
                               'pass a new or empty folder')
    if source_name.startswith('local-dir:') and out.resolve() == Path(source_name[len('local-dir:'):]).resolve():
        raise CalibrationError(f'--out {out} is the source model\'s folder; '
                               'write the calibrated model to another folder')


def _summary(fitted: Dict[str, Any]) -> str:
    value = f'T = {fitted["temperature"]:.4f}' if 'temperature' in fitted else f'tau = {fitted["tau"]:g}'
    extra = {'scale': ', bias scaled with its row', 'drop': ', bias dropped'}.get(fitted.get('bias'), '')
    return f'{METHOD_NAMES[fitted["method"]]} ({value}{extra})'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    from ..evaluation import one_line_warnings

    with one_line_warnings('calibrate'):  # a warning is one line, like the errors
        return _calibrate(args, argv)


def _calibrate(args, argv) -> int:
    import warnings

    from ..calibration import METHODS

    def fail(message: str) -> int:
        print(f'calibrate: error: {message}', file=sys.stderr)
        return 2

    if args.method not in METHODS:
        return fail(f'unknown --method {args.method!r}: choose one of {", ".join(METHODS)}')
    if args.batch_size < 1:
        return fail(f'--batch-size must be >= 1, got {args.batch_size}')

    import torch

    from ..calibration import class_mean_accuracy, nll
    from ..data.encoding import EncodingMismatchWarning, image_encoding, recorded_encoding
    from ..data.hf import DataError, load_split
    from ..evaluation import DecodedSplit, evaluate_many
    from ..hub import HubError, load_model, resolve_source, save_hub_folder

    out = Path(args.out)
    try:
        source_name = resolve_source(args.source)
        _check_out(out, source_name)
        model = load_model(args.source)
        mislas = dict(getattr(model, 'mislas_config', {}) or {})
        num_classes = int(model.get_classifier().out_features)
        require_validation_record(mislas)
        # The test split is read and decoded once, for the reports before and after.
        test = DecodedSplit(args.dataset, args.split_test, image_column=args.image_column,
                            label_column=args.label_column)
        image_column, label_column = test.image_column, test.label_column
        train = load_split(args.dataset, args.split_train)
        if recorded_encoding(model):  # one warning before any work, naming the splits
            warn_encodings(model, args.source, args.dataset, {args.split_train: image_encoding(train, image_column),
                                                              args.split_test: test.encoding})
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', EncodingMismatchWarning)  # said above
            new, fitted, val_idx, (features, val_labels) = fit_on_validation(
                model, args.method, args.dataset, split_train=args.split_train, image_column=image_column,
                label_column=label_column, batch_size=args.batch_size, bias_mode=args.tau_norm_bias, train=train)
    except (HubError, DataError, ValueError) as err:  # CalibrationError is a ValueError
        return fail(str(err))

    def val_scores(m: torch.nn.Module) -> Dict[str, float]:
        with torch.no_grad():
            z = m.get_classifier()(features.to(next(m.parameters()).dtype)).double()
        return {'nll': nll(z, val_labels), 'top1': class_mean_accuracy(z, val_labels, num_classes)}

    try:
        val_before, val_after = val_scores(model), val_scores(new)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', EncodingMismatchWarning)  # said above
            # the test split: reported, never fitted or selected on
            before, after = evaluate_many([model, new], test, batch_size=args.batch_size, dataset_name=args.dataset)
    except (DataError, ValueError) as err:
        return fail(str(err))
    value_key = 'temperature' if 'temperature' in fitted else 'tau'
    posthoc = {**fitted, 'fitted_on': 'validation', 'val_sha256': mislas['val_sha256'], 'num_val': len(val_idx),
               'val_before': val_before, 'val_after': val_after, 'source': args.source,
               'command': 'python -m mislas_timm.calibrate ' + ' '.join(sys.argv[1:] if argv is None else argv)}
    if mislas.get('posthoc'):
        posthoc['previous'] = mislas['posthoc']
    metrics = dict(after)
    metrics['uncalibrated'] = {k: before[k] for k in ('top1', 'top5', 'ece', 'mce', 'nll', 'brier')}
    arch = model.pretrained_cfg.get('architecture') or type(model).__name__
    what = _summary(fitted)
    card_context = {
        'title': f'{arch} + {what}',
        'summary': (f'`{args.source}` with {what} fitted on the held-out validation split ({len(val_idx)} images of '
                    f'the training split, sha256 `{mislas["val_sha256"]}`; never the test split) and folded into the '
                    'final linear layer, so this is an ordinary timm model. '
                    f'Before: top-1 {100 * before["top1"]:.2f}%, ECE {100 * before["ece"]:.2f}%; '
                    f'after: top-1 {100 * after["top1"]:.2f}%, '
                    f'ECE {100 * after["ece"]:.2f}% on the test split.'),
    }
    save_hub_folder(new, out, label_names=model.pretrained_cfg.get('label_names'),
                    mislas={**mislas, 'posthoc': posthoc}, metrics=metrics, card_context=card_context)

    print(f'{what}, fitted on {len(val_idx)} validation images: val NLL {val_before["nll"]:.4f} -> '
          f'{val_after["nll"]:.4f}, val top-1 {100 * val_before["top1"]:.2f}% -> {100 * val_after["top1"]:.2f}%')
    print(f'{"test split":<12} {"top-1":>8} {"ECE":>8} {"NLL":>8}')
    for name, r in (('before', before), ('after', after)):
        print(f'{name:<12} {100 * r["top1"]:>7.2f}% {100 * r["ece"]:>7.2f}% {r["nll"]:>8.4f}')
    print(f'wrote {out} ({value_key} = {fitted[value_key]:g})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
