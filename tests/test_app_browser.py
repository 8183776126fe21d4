"""The running demo in a real browser: headless Debian Chromium driven by Playwright."""
import shutil

import pytest

from mislas_timm.demo import example_images

from .demo_fixtures import demo_folders, demo_models, running_app  # noqa: F401  (fixtures)

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run', '--disable-quic']


@pytest.mark.browser
def test_page_predicts_in_chromium(running_app, demo_models, tmp_path):
    if not shutil.which('chromium') and not shutil.os.path.exists(CHROMIUM):
        pytest.fail('Debian chromium is missing: apt-get install -y chromium (the browser test needs it)')
    from playwright.sync_api import sync_playwright

    from mislas_timm.demo import open_image, predict_pair
    mislas, baselines = demo_models
    ship = next(p for p in example_images() if 'ship' in p)
    top_m, top_b, _, sentence, _ = predict_pair(mislas, baselines['CE baseline'], open_image(ship))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={'width': 1280, 'height': 1400})
        page.goto(running_app, wait_until='load')
        page.get_by_text('Calibrated long-tailed recognition').wait_for(timeout=60_000)
        page.set_input_files('input[type=file]', ship)
        page.get_by_role('button', name='Predict').click()
        page.locator('#sentence').get_by_text('MiSLAS says').wait_for(timeout=30_000)
        shown = page.locator('#sentence').inner_text()
        table = page.locator('#top5-table').inner_text()
        label_m = page.locator('#label-mislas').inner_text()
        page.screenshot(path=str(tmp_path / 'demo.png'), full_page=True)
        browser.close()
    assert shown.strip() == sentence.replace('**', '').strip()
    best = max(top_m, key=top_m.get)
    assert best in label_m and best in table
    assert any(g in table for g in ('head', 'medium', 'tail'))
    assert (tmp_path / 'demo.png').stat().st_size > 10_000
