"""Command line for Hub folders.

    python -m mislas_timm.hub push FOLDER ORG/NAME [--private]   # token: HF_TOKEN or `hf auth login`
    python -m mislas_timm.hub card FOLDER --hub-id ORG/NAME [--title ...] [--limitation ...]
    python -m mislas_timm.hub check FOLDER
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..plots import reliability_diagram_png
from . import CardError, HubError, check_card_matches_metrics, prepare_upload, push_to_hub, read_hub_config, render_card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m mislas_timm.hub', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    push = sub.add_parser('push', help='upload a complete Hub folder')
    push.add_argument('folder')
    push.add_argument('repo_id')
    push.add_argument('--private', action='store_true')
    card = sub.add_parser('card', help='re-render README.md and reliability.png of a Hub folder from its config.json '
                                           'and metrics.json')
    card.add_argument('folder')
    card.add_argument('--hub-id', required=True)
    card.add_argument('--title')
    card.add_argument('--summary')
    card.add_argument('--dataset-id', help='Hub data set id for the card front matter')
    card.add_argument('--limitation', action='append', default=[])
    check = sub.add_parser('check', help='validate a Hub folder as push would')
    check.add_argument('folder')
    args = p.parse_args(argv)
    try:
        if args.command == 'push':
            print(push_to_hub(args.folder, args.repo_id, private=args.private))
        elif args.command == 'card':
            folder = Path(args.folder)
            config = read_hub_config(folder)
            metrics = json.loads((folder / 'metrics.json').read_text())
            context = {'hub_id': args.hub_id, 'title': args.title, 'summary': args.summary,
                       'dataset_id': args.dataset_id, 'limitations': args.limitation}
            text = render_card(config, metrics, context)
            check_card_matches_metrics(text, metrics)
            png = reliability_diagram_png(metrics['reliability'], metrics['ece'], metrics['top1'],
                                          title=args.title or args.hub_id)
            for name, data in (('README.md', text.encode()), ('reliability.png', png)):
                tmp = folder / f'.{name}.tmp'
                tmp.write_bytes(data)
                tmp.replace(folder / name)
            print(f'wrote {folder / "README.md"} and {folder / "reliability.png"}')
        else:
            prepare_upload(args.folder)
            print(f'{args.folder}: complete Hub folder, card agrees with metrics.json')
    except (HubError, CardError) as err:
        print(f'hub: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
