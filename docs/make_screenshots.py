#!/usr/bin/env python
"""Re-take the README's screenshots of the demo (run it again after replacing the zoo models).

    python docs/make_screenshots.py [--example ship_0001.png] [--chromium /usr/bin/chromium]

Starts ``python app.py`` (the bundled models, offline) on a free port, clicks an example in headless
Chromium (the prediction runs on the click, without pressing Predict) and writes:

- ``docs/demo.png``: a 1280 px wide window, the whole page;
- ``docs/demo_narrow.png``: a 420 px wide window (a phone), from the top to the end of the top-5 table.

The default example, ``ship_0001.png`` (a tail class), is one both bundled models get wrong, which is
the point of the picture: the page says so ("The example's label is ship: both models are wrong, MiSLAS
less confidently"), the baseline is 100% sure of its mistake, MiSLAS much less.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'make_screenshots: the demo did not start at {url}')
            time.sleep(1)


def shoot(browser, url: str, example: str, width: int, out: Path, to_table_end: bool) -> None:
    page = browser.new_page(viewport={'width': width, 'height': 1000})
    page.goto(url, wait_until='load')
    page.get_by_text('Calibrated long-tailed recognition').wait_for(timeout=60_000)
    page.locator(f'#examples button:has(img[src$="/{example}"])').click()
    page.locator('#sentence').get_by_text("The example's label is").wait_for(timeout=60_000)
    page.locator('#input-note').get_by_text('pixels').wait_for(timeout=60_000)
    page.locator('#preview img').wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # let the bars of the labels finish their animation
    clip = None
    if to_table_end:
        box = page.locator('#top5-table').bounding_box()
        height = page.evaluate('() => window.scrollY') + box['y'] + box['height'] + 16
        clip = {'x': 0, 'y': 0, 'width': width, 'height': height}
    page.screenshot(path=str(out), full_page=True, clip=clip)
    page.close()
    print(f'wrote {out.relative_to(ROOT)}')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--example', default='ship_0001.png', help='the example to click (a file name in '
                                                             'mislas_timm/assets/examples)')
    p.add_argument('--chromium', default='/usr/bin/chromium')
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f'http://127.0.0.1:{port}/'
    server = subprocess.Popen([sys.executable, str(ROOT / 'app.py'), '--port', str(port)], cwd=ROOT,
                              env=dict(os.environ, HF_HUB_OFFLINE='1'))
    try:
        wait_for(url, server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            shoot(browser, url, args.example, 1280, ROOT / 'docs' / 'demo.png', to_table_end=False)
            shoot(browser, url, args.example, 420, ROOT / 'docs' / 'demo_narrow.png', to_table_end=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == '__main__':
    sys.exit(main())
