"""Command line: evaluate any model source on a data set split, write metrics.json + reliability.png.

    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID [--split test] [--out DIR]

SOURCE: a zoo name, a Hub folder, local-dir:PATH or hf-hub:ORG/NAME. The class groups use the
training counts recorded in the model's config.json (``mislas.class_counts``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m mislas_timm.evaluate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', help='zoo name, Hub folder, local-dir:PATH or hf-hub:ORG/NAME')
    p.add_argument('--dataset', required=True, help='Hub id or local data set folder')
    p.add_argument('--split', default='test', help='split to evaluate (default: test)')
    p.add_argument('--out', help='folder for metrics.json and reliability.png (default: print only)')
    p.add_argument('--image-column', help='image column (default: img / image / ...)')
    p.add_argument('--label-column', help='label column (default: label / fine_label / ...)')
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--max-samples', type=int, help='evaluate the first N samples only')
    args = p.parse_args(argv)

    from .data.hf import DataError
    from .evaluation import evaluate
    from .hub import HubError, load_model, write_json_atomic
    from .plots import reliability_diagram_png

    try:
        model = load_model(args.source)
        report = evaluate(model, args.dataset, split=args.split, image_column=args.image_column,
                          label_column=args.label_column, batch_size=args.batch_size, max_samples=args.max_samples)
    except (HubError, DataError, ValueError) as err:
        print(f'evaluate: error: {err}', file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ('top1', 'top5', 'ece', 'mce', 'nll', 'brier', 'num_samples')}
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / 'metrics.json', report)
        png = reliability_diagram_png(report['reliability'], report['ece'], report['top1'], title=args.source)
        tmp = out / '.reliability.png.tmp'
        tmp.write_bytes(png)
        tmp.replace(out / 'reliability.png')
        print(f'wrote {out / "metrics.json"} and {out / "reliability.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
