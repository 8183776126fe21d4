"""The running demo in a real browser: headless Debian Chromium driven by Playwright."""
import os
import re
import shutil
from pathlib import Path

import pytest

from mislas_timm.demo import example_class, example_images, input_note, open_image, predict_pair

from .demo_fixtures import (CUSTOM_NAMES, custom_examples, custom_folders, custom_models, demo_folders,  # noqa: F401
                            demo_models, running_app, running_custom_app, write_png)
from .hub_fixtures import CIFAR10_NAMES

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run', '--disable-quic']

# For every word of every header and cell of the top-5 table: how many line boxes it is drawn in
# (2 or more: the word is broken mid-word), plus the computed styles that decide breaking.
WORDS_JS = """() => {
  const cells = Array.from(document.querySelectorAll('#top5-table th, #top5-table td'));
  return cells.map(cell => {
    const words = [];
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        words.push([m[0], range.getClientRects().length]);
      }
    }
    const style = getComputedStyle(cell);
    const full = document.createRange();
    full.selectNodeContents(cell);
    const tops = new Set(Array.from(full.getClientRects()).map(r => Math.round(r.top)));
    return {tag: cell.tagName, text: cell.innerText.trim(), words: words, lines: tops.size,
            wordBreak: style.wordBreak, overflowWrap: style.overflowWrap, hyphens: style.hyphens};
  });
}"""


def _browser(p):
    if not os.path.exists(CHROMIUM) and not shutil.which('chromium'):
        pytest.fail('Debian chromium is missing: apt-get install -y chromium (the browser test needs it)')
    return p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which('chromium'),
                             args=ARGS)


def _open(page, url):
    page.goto(url, wait_until='load')
    page.get_by_text('Calibrated long-tailed recognition').wait_for(timeout=60_000)


@pytest.mark.browser
def test_example_click_predicts_at_once(running_app, demo_models, tmp_path):
    from playwright.sync_api import sync_playwright

    mislas, baselines = demo_models
    ship = next(p for p in example_images() if 'ship' in Path(p).name)
    truth = example_class(ship, mislas.label_names)
    top_m, _, _, sentence, _ = predict_pair(mislas, baselines['CE baseline'], open_image(ship), true_class=truth)
    assert truth == CIFAR10_NAMES.index('ship') and "The example's label is **ship**" in sentence
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={'width': 1280, 'height': 1000})
        _open(page, running_app)
        predict_button = page.get_by_role('button', name='Predict')
        examples = page.locator('#examples')
        # The examples sit right under the upload box, above the Predict button, without scrolling.
        upload_box, examples_box, button_box = (page.locator('#upload').bounding_box(), examples.bounding_box(),
                                                predict_button.bounding_box())
        title_y = page.get_by_text('Calibrated long-tailed recognition').bounding_box()['y']
        assert upload_box['y'] < examples_box['y'] < button_box['y']
        assert examples_box['y'] + examples_box['height'] < 1000
        thumbnails = examples.locator('button img')
        assert thumbnails.count() == len(example_images())
        examples.locator(f'button:has(img[src$="/{Path(ship).name}"])').click()  # and NOT Predict
        page.locator('#sentence').get_by_text('MiSLAS says').wait_for(timeout=30_000)
        page.locator('#input-note').get_by_text('used as is').wait_for(timeout=30_000)
        shown = page.locator('#sentence').inner_text()
        table = page.locator('#top5-table').inner_text()
        label_m = page.locator('#label-mislas').inner_text()
        upload = page.locator('#upload').inner_text()
        note = page.locator('#input-note').inner_text()
        classes = page.locator('#classes-note').inner_text()
        page.locator('#preview img').wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        # the result is on screen next to the examples already: the page does not jump
        assert page.get_by_text('Calibrated long-tailed recognition').bounding_box()['y'] == title_y
        page.screenshot(path=str(tmp_path / 'demo.png'), full_page=True)
        browser.close()
    assert shown.strip() == sentence.replace('**', '').strip()
    best = max(top_m, key=top_m.get)
    assert best in label_m and best in table
    assert any(g in table for g in ('head', 'medium', 'tail'))
    assert Path(ship).name in upload.replace('\n', '')  # the clicked example is now the input, for Predict or another baseline
    assert note.strip() == input_note([mislas, baselines['CE baseline']], open_image(ship).size)
    assert 'only the 10 CIFAR-10 classes' in classes
    assert (tmp_path / 'demo.png').stat().st_size > 10_000


@pytest.mark.browser
def test_narrow_window_upload_and_whole_words(running_app, demo_models, tmp_path):
    from playwright.sync_api import sync_playwright

    mislas, baselines = demo_models
    big = write_png(tmp_path / 'big_upload.png', size=(400, 300))
    top_m, _, _, sentence, _ = predict_pair(mislas, baselines['CE baseline'], open_image(str(big)))
    expected_note = input_note([mislas, baselines['CE baseline']], (400, 300))
    car = next(p for p in example_images() if 'automobile' in Path(p).name)
    car_sentence = predict_pair(mislas, baselines['CE baseline'], open_image(car),
                                true_class=example_class(car, mislas.label_names))[3]
    assert 'resized from 400x300' in expected_note and car_sentence != sentence  # so the sentence changes
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={'width': 420, 'height': 900})
        _open(page, running_app)
        page.set_input_files('#upload input[type=file]', str(big))
        page.locator('#preview img').wait_for(timeout=30_000)
        page.get_by_role('button', name='Predict').click()
        page.locator('#sentence').get_by_text('MiSLAS says').wait_for(timeout=30_000)
        page.locator('#input-note').get_by_text('resized from 400x300').wait_for(timeout=30_000)
        shown = page.locator('#sentence').inner_text()
        note = page.locator('#input-note').inner_text()
        # An example click from the top of the page: its result, below the Predict button at this width,
        # is brought into view.
        page.evaluate('() => window.scrollTo(0, 0)')
        page.locator(f'#examples button:has(img[src$="/{Path(car).name}"])').click()
        page.locator('#sentence').get_by_text(car_sentence.replace('**', '')).wait_for(timeout=30_000)
        page.wait_for_function("() => { const r = document.querySelector('#sentence').getBoundingClientRect(); "
                               "return r.top >= 0 && r.bottom <= window.innerHeight; }", timeout=30_000)
        cells = page.evaluate(WORDS_JS)
        fits = page.locator('#top5-table').evaluate('e => [e.scrollWidth, e.clientWidth]')
        page_width = page.evaluate('() => document.documentElement.scrollWidth')
        page.screenshot(path=str(tmp_path / 'demo_narrow.png'), full_page=True)
        browser.close()
    assert shown.strip() == sentence.replace('**', '').strip()
    assert note.strip() == expected_note
    headers = [c for c in cells if c['tag'] == 'TH']
    assert [h['text'] for h in headers] == ['class', 'MiSLAS', 'baseline', 'group (training images)']
    for cell in cells:
        assert cell['wordBreak'] not in ('break-all', 'break-word') and cell['overflowWrap'] in ('normal',)
        assert cell['hyphens'] != 'auto'
        broken = [w for w, boxes in cell['words'] if boxes != 1]
        assert not broken, f'{cell["text"]!r} is broken mid-word at 420 px: {broken}'
    for header in headers:
        if ' ' not in header['text']:
            assert header['lines'] == 1, header
    assert fits[0] <= fits[1] + 1, f'the top-5 table overflows its box at 420 px: {fits}'
    assert page_width <= 420
    assert (tmp_path / 'demo_narrow.png').stat().st_size > 10_000


@pytest.mark.browser
def test_fine_tuned_pair_shows_its_own_classes_only(running_custom_app, custom_models, custom_examples, tmp_path):
    """A user's fine-tuned 5-class pair with --examples: the page names its classes and no CIFAR-10 one."""
    from playwright.sync_api import sync_playwright

    mislas, baselines = custom_models
    baseline = baselines['baseline: stage1']
    paths = example_images(str(custom_examples))
    index = next(i for i, p in enumerate(paths) if Path(p).parent.name == 'cactus')
    sentence = predict_pair(mislas, baseline, open_image(paths[index]), true_class=CUSTOM_NAMES.index('cactus'))[3]
    loose = next(p for p in paths if p.endswith('.jpg'))
    upload_sentence = predict_pair(mislas, baseline, open_image(loose))[3]
    cifar_words = re.compile(r'\b(' + '|'.join(CIFAR10_NAMES) + r'|CIFAR)\b', re.IGNORECASE)
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={'width': 1280, 'height': 1000})
        _open(page, running_custom_app)
        # An upload (its file name is a class, but an upload's name is no label), then an example click.
        page.set_input_files('#upload input[type=file]', loose)
        page.locator('#preview img').wait_for(timeout=30_000)
        page.get_by_role('button', name='Predict').click()
        page.locator('#sentence').get_by_text(upload_sentence.replace('**', '')).wait_for(timeout=30_000)
        uploaded = page.locator('#sentence').inner_text()
        uploaded_page = page.locator('body').inner_text()
        thumbnails = page.locator('#examples button img')
        thumbnails.nth(len(paths) - 1).wait_for(timeout=30_000)
        assert thumbnails.count() == len(paths)
        thumbnails.nth(index).click()
        page.locator('#sentence').get_by_text("The example's label is cactus").wait_for(timeout=30_000)
        shown = page.locator('#sentence').inner_text()
        labels = page.locator('#label-mislas').inner_text() + page.locator('#label-baseline').inner_text()
        table = page.locator('#top5-table').inner_text()
        classes = page.locator('#classes-note').inner_text()
        radio = page.locator('input[type=radio]').count()
        clicked_page = page.locator('body').inner_text()
        page.screenshot(path=str(tmp_path / 'custom.png'), full_page=True)
        browser.close()
    assert shown.strip() == sentence.replace('**', '').strip()
    assert uploaded.strip() == upload_sentence.replace('**', '').strip() and 'label is' not in uploaded
    assert classes.strip().startswith('The models know only 5 classes: ' + ', '.join(CUSTOM_NAMES))
    assert radio == 1  # its own baseline, no zoo model
    for text in (clicked_page, uploaded_page):
        assert not cifar_words.search(text), cifar_words.search(text)
    assert sum(name in labels for name in CUSTOM_NAMES) >= 2  # both labels show classes of its own
    rows = [line.split('\t')[0].strip() for line in table.strip().splitlines()[1:]]
    assert len(rows) == 5 and set(rows) == set(CUSTOM_NAMES), table
    assert (tmp_path / 'custom.png').stat().st_size > 10_000
