#!/usr/bin/env python
"""Gradio demo: MiSLAS confidence next to an over-confident baseline, offline on the bundled models.

    python app.py [--model SOURCE] [--baseline SOURCE] [--port N] [--share]

SOURCE: a zoo name, a Hub folder, local-dir:PATH or hf-hub:ORG/NAME. The logic lives in
``mislas_timm.demo``.
"""
from __future__ import annotations

import argparse
import socket
import sys

from mislas_timm import zoo

DEFAULT_MODEL = 'resnet32_cifar.cifar10_lt_if100_mislas'
ZOO_BASELINES = [('CE-only stage 1 (most over-confident)', 'resnet32_cifar.cifar10_lt_if100_ce'),
                 ('mixup stage 1', 'resnet32_cifar.cifar10_lt_if100_mixup')]


def share_reachable(host: str = 'api.gradio.app', port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'the calibrated model (default: {DEFAULT_MODEL})')
    p.add_argument('--baseline', help='the baseline to compare against (default: the bundled CE-only model; '
                                      'the bundled mixup model is one click away)')
    p.add_argument('--port', type=int, default=7860)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--share', action='store_true', help='also open a public gradio.live link (needs internet)')
    args = p.parse_args(argv)

    from mislas_timm.demo import HubError, build_app, configure_logging, launch_app, load_models

    baselines = [('baseline: ' + args.baseline, args.baseline)] if args.baseline else []
    baselines += [(label, name) for label, name in ZOO_BASELINES if zoo.get(name).folder.is_dir()]
    if not baselines:
        print('app.py: error: no baseline model: pass --baseline SOURCE', file=sys.stderr)
        return 2
    try:
        mislas, loaded = load_models(args.model, baselines)
    except HubError as err:
        print(f'app.py: error: {err}', file=sys.stderr)
        return 2
    share = args.share
    if share and not share_reachable():
        print('app.py: --share needs internet access to Gradio\'s share servers, which cannot be reached; '
              f'serving locally only at http://{args.host}:{args.port}', file=sys.stderr)
        share = False
    configure_logging()
    launch_app(build_app(mislas, loaded), server_name=args.host, server_port=args.port, share=share)
    return 0


if __name__ == '__main__':
    sys.exit(main())
