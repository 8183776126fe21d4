"""The demo's functions, the running app through gradio_client, and app.py's command line."""
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from mislas_timm import demo
from mislas_timm.demo import (MAX_PIXELS, ZOO_BASELINES, DemoError, classes_note, default_examples, example_class,
                              example_images, input_note, open_image, predict_pair, zoo_baselines)

from .demo_fixtures import (CUSTOM_NAMES, custom_examples, custom_folders, custom_models, demo_folders,  # noqa: F401
                            demo_models, free_port, make_custom_folder, running_app, write_png)
from .hub_fixtures import CIFAR10_LT_COUNTS, CIFAR10_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_models_carry_folder_information(demo_models, demo_folders):
    mislas, baselines = demo_models
    assert mislas.label_names == CIFAR10_NAMES and mislas.class_counts == CIFAR10_LT_COUNTS
    assert mislas.groups == ['head'] * 3 + ['medium'] * 4 + ['tail'] * 3
    assert mislas.reliability_png == str(demo_folders[0] / 'reliability.png')
    assert f'{100 * mislas.metrics["ece"]:.2f}%' in mislas.summary_markdown()


def test_predict_pair(demo_models, tmp_path):
    mislas, baselines = demo_models
    image = open_image(str(write_png(tmp_path / 'x.png')))
    top_m, top_b, full, sentence, table = predict_pair(mislas, baselines['CE baseline'], image)
    assert len(top_m) == len(top_b) == 5
    for key in ('mislas', 'baseline'):
        assert list(full[key]) == CIFAR10_NAMES and math.isclose(sum(full[key].values()), 1, abs_tol=1e-5)
    best_b = max(full['baseline'], key=full['baseline'].get)
    assert f'{100 * full["baseline"][best_b]:.0f}% {best_b}' in sentence and sentence.startswith('The baseline says')
    rows = table.splitlines()[2:]
    assert len(rows) == 5
    for row in rows:
        cls = row.split('|')[1].strip()
        i = CIFAR10_NAMES.index(cls)
        group = 'head' if i < 3 else 'medium' if i < 7 else 'tail'
        assert f'{group} ({CIFAR10_LT_COUNTS[i]} training images)' in row
        assert f'{100 * full["mislas"][cls]:.1f}%' in row


def test_probabilities_equal_a_direct_model_call(demo_models, tmp_path):
    import timm
    mislas, _ = demo_models
    image = open_image(str(write_png(tmp_path / 'y.png')))
    cfg = timm.data.resolve_data_config({}, model=mislas.model)
    x = timm.data.create_transform(**cfg)(image).unsqueeze(0)
    with torch.no_grad():
        direct = mislas.model(x).softmax(1)[0]
    assert torch.allclose(mislas.probabilities(image), direct, atol=1e-6)


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'P', 'CMYK'])
def test_image_modes_are_converted(tmp_path, mode):
    suffix = '.jpg' if mode == 'CMYK' else '.png'
    image = open_image(str(write_png(tmp_path / f'i{suffix}', mode)))
    assert image.mode == 'RGB'


def test_bad_images(tmp_path):
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    with pytest.raises(DemoError, match='not an image'):
        open_image(str(text))
    good = write_png(tmp_path / 'ok.png', size=(64, 64))
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DemoError, match='truncated or corrupt'):
        open_image(str(truncated))
    big = tmp_path / 'big.png'
    Image.new('L', (10000, 10000)).save(big)  # 100 megapixels, > MAX_PIXELS
    assert 10000 * 10000 > MAX_PIXELS
    with pytest.raises(DemoError, match='megapixels'):
        open_image(str(big))
    with pytest.raises(DemoError, match='Upload an image'):
        open_image(None)


def _transform_steps(dm, size):
    """The sizes the model's transform really produces from an image of ``size``: its PIL steps, run."""
    image, steps = Image.new('RGB', size), []
    for t in dm.transform.transforms:
        out = t(image)
        if not isinstance(out, Image.Image):
            break
        if out.size != image.size:
            steps.append(out.size)
        image = out
    return image.size, steps


@pytest.mark.parametrize('size', [(4000, 4000), (4000, 3000), (20, 50), (40, 40), 'input'])
def test_input_note_says_how_the_image_is_resized(demo_models, size):
    mislas, baselines = demo_models
    model_size = tuple(mislas.model.pretrained_cfg['input_size'][:0:-1])  # (width, height)
    size = model_size if size == 'input' else size
    final, steps = _transform_steps(mislas, size)
    assert final == model_size
    note = input_note([mislas, baselines['CE baseline']], size)
    assert '\n' not in note  # both models preprocess alike: one sentence
    fmt = 'x'.join
    if not steps:
        assert f'is {fmt(map(str, size))} pixels' in note and 'used as is' in note
    elif len(steps) == 1:
        assert f'resized from {fmt(map(str, size))} to {fmt(map(str, final))} pixels' in note
    else:
        assert (f'resized from {fmt(map(str, size))} to {fmt(map(str, steps[0]))} and center-cropped to '
                f'{fmt(map(str, final))} pixels') in note
    assert "models' input size" in note


def test_classes_note_names_every_class(demo_models):
    mislas, _ = demo_models
    note = classes_note(mislas)
    assert 'only the 10 CIFAR-10 classes' in note and all(name in note for name in CIFAR10_NAMES)
    assert 'noise' in note


def test_bundled_examples_include_tail_classes():
    names = [Path(p).stem.split('_')[0] for p in example_images()]
    assert {'ship', 'truck', 'horse'} <= set(names) and {'airplane', 'automobile'} <= set(names)
    assert all(Image.open(p).size == (32, 32) for p in example_images())


def test_running_app_through_gradio_client(running_app, demo_models, tmp_path):
    from gradio_client import Client, handle_file
    mislas, baselines = demo_models
    client = Client(running_app, verbose=False)
    path = str(example_images()[0])
    label_m, label_b, full, sentence, table = client.predict(handle_file(path), api_name='/predict')
    assert label_m['label'] == max(full['mislas'], key=full['mislas'].get)
    assert len(label_m['confidences']) == 5 and len(label_b['confidences']) == 5
    image = open_image(path)
    for key, dm in (('mislas', mislas), ('baseline', baselines['CE baseline'])):
        direct = dm.probabilities(image)
        got = torch.tensor([full[key][n] for n in CIFAR10_NAMES])
        assert torch.allclose(got, direct, atol=1e-5)
        assert math.isclose(float(got.sum()), 1.0, abs_tol=1e-5)
    assert 'MiSLAS says' in sentence


def test_twenty_concurrent_requests(running_app):
    from gradio_client import Client, handle_file
    client = Client(running_app, verbose=False)
    paths = [example_images()[i % len(example_images())] for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        jobs = [pool.submit(client.predict, handle_file(p), api_name='/predict') for p in paths]
        results = [job.result(timeout=120) for job in jobs]
    assert len(results) == 20 and all(len(r[0]['confidences']) == 5 for r in results)


def test_bad_upload_shows_message_and_server_keeps_serving(running_app, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(running_app, verbose=False)
    bad = tmp_path / 'fake.png'
    bad.write_text('definitely not a PNG')
    with pytest.raises(Exception, match='not an image'):
        client.predict(handle_file(str(bad)), api_name='/predict')
    ok = client.predict(handle_file(example_images()[0]), api_name='/predict')
    assert len(ok[0]['confidences']) == 5


def test_predict_api_is_the_only_endpoint_and_keeps_its_signature(running_app):
    """Clients rely on /predict: one file in, five values out (two Labels, JSON, two Markdowns)."""
    from gradio_client import Client
    api = Client(running_app, verbose=False).view_api(print_info=False, return_format='dict')
    assert list(api['named_endpoints']) == ['/predict'] and not api['unnamed_endpoints']
    predict = api['named_endpoints']['/predict']
    assert [p['parameter_name'] for p in predict['parameters']] == ['image_path']
    assert [r['component'] for r in predict['returns']] == ['Label', 'Label', 'Json', 'Markdown', 'Markdown']


def test_bad_upload_logs_one_line_and_no_traceback(running_app, tmp_path, capfd, caplog):
    from gradio_client import Client, handle_file
    client = Client(running_app, verbose=False)
    bad = tmp_path / 'broken.png'
    bad.write_text('still not a PNG')
    capfd.readouterr()
    with caplog.at_level('WARNING', logger='mislas_timm.demo'):
        with pytest.raises(Exception, match='not an image'):
            client.predict(handle_file(str(bad)), api_name='/predict')
    _, err = capfd.readouterr()
    assert 'Traceback' not in err and 'gradio.exceptions.Error' not in err
    records = [r for r in caplog.records if r.name == 'mislas_timm.demo']
    assert len(records) == 1 and 'broken.png' in records[0].getMessage()
    assert 'not an image' in records[0].getMessage() and '\n' not in records[0].getMessage()


def test_app_server_log_has_one_line_per_bad_upload(demo_folders, tmp_path):
    """python app.py as users run it: each refused upload is one stderr line, and the server keeps serving."""
    from gradio_client import Client, handle_file
    port = free_port()
    log_file = tmp_path / 'server.log'
    with open(log_file, 'w') as log:
        server = subprocess.Popen([sys.executable, str(ROOT / 'app.py'), '--model', str(demo_folders[0]),
                                   '--baseline', str(demo_folders[1]), '--port', str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    try:
        url = f'http://127.0.0.1:{port}/'
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log_file.read_text()
                time.sleep(1)
        client = Client(url, verbose=False)
        bad = tmp_path / 'fake.png'
        bad.write_text('definitely not a PNG')
        for _ in range(2):
            with pytest.raises(Exception, match='not an image'):
                client.predict(handle_file(str(bad)), api_name='/predict')
        ok = client.predict(handle_file(example_images()[0]), api_name='/predict')
        assert len(ok[0]['confidences']) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = log_file.read_text().splitlines()
    assert 'Traceback' not in log_file.read_text()
    refused = [line for line in lines if 'refused an upload' in line]
    assert len(refused) == 2 and all('fake.png' in line and 'not an image' in line for line in refused)


def test_app_cli_unknown_model_is_one_line_error():
    result = subprocess.run([sys.executable, str(ROOT / 'app.py'), '--model', 'no-such-model', '--baseline',
                             'also-missing'], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.startswith('app.py: error:') and 'unknown model source' in err and '\n' not in err



def _wait_until_served(url, server, log_file, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log_file.read_text()
            time.sleep(1)


CIFAR_WORDS = re.compile(r'\b(' + '|'.join(CIFAR10_NAMES) + r'|CIFAR)\b', re.IGNORECASE)


def test_example_sentence_says_which_model_is_right(demo_models, tmp_path):
    mislas, baselines = demo_models
    baseline = baselines['CE baseline']
    image = open_image(str(write_png(tmp_path / 'z.png')))
    _, _, full, plain, table = predict_pair(mislas, baseline, image)
    m, b = (CIFAR10_NAMES.index(max(full[k], key=full[k].get)) for k in ('mislas', 'baseline'))
    for true in range(10):
        sentence = predict_pair(mislas, baseline, image, true_class=true)[3]
        verdict = ('both models are right.' if m == b == true else 'only MiSLAS is right.' if m == true
                   else 'only the baseline is right.' if b == true else 'both models are wrong')
        assert sentence.startswith(plain + f" The example's label is **{CIFAR10_NAMES[true]}**: {verdict}")
    assert predict_pair(mislas, baseline, image, true_class=None)[3] == plain  # uploads: no claim from a file name


def test_example_images_of_a_folder(custom_examples):
    paths = example_images(str(custom_examples))
    rel = [Path(p).relative_to(custom_examples).as_posix() for p in paths]
    assert rel == ['violin_0007.jpg', 'bicycle/0000.png', 'bicycle/0001.png', 'cactus/0000.png', 'cactus/0001.png',
                   'lantern/0000.png', 'lantern/0001.png']  # notes.txt is not an image
    assert [example_class(p, CUSTOM_NAMES) for p in paths] == [4, 0, 0, 1, 1, 2, 2]
    few = example_images(str(custom_examples), limit=4)  # a sample of a big test folder: every class first
    assert [Path(p).relative_to(custom_examples).as_posix() for p in few] == [
        'violin_0007.jpg', 'bicycle/0000.png', 'cactus/0000.png', 'lantern/0000.png']
    assert example_class('x/ship_0001.png', CIFAR10_NAMES) == 8 and example_class('x/ship.png', CIFAR10_NAMES) == 8
    assert example_class('x/shipping.png', CIFAR10_NAMES) is None and example_class('x/0001.png', CIFAR10_NAMES) is None
    assert example_class('pickup_truck_0001.png', ['pickup', 'pickup_truck']) == 1


def test_custom_models_keep_their_own_classes(custom_models):
    mislas, baselines = custom_models
    assert mislas.label_names == CUSTOM_NAMES == baselines['baseline: stage1'].label_names
    assert default_examples(mislas) == [] and zoo_baselines(mislas.label_names) == []
    note = classes_note(mislas)
    assert 'only 5 classes' in note and all(name in note for name in CUSTOM_NAMES) and not CIFAR_WORDS.search(note)


def test_zoo_baselines_only_for_cifar10_classes(demo_models):
    mislas, _ = demo_models
    assert [name for _, name in zoo_baselines(CIFAR10_NAMES)] == [name for _, name in ZOO_BASELINES]
    assert zoo_baselines(CIFAR10_NAMES[::-1]) == [] and zoo_baselines(CIFAR10_NAMES[:5]) == []
    assert default_examples(mislas) == example_images()


def _page_text(config) -> str:
    """What the page shows: every component's value, label, choices and examples."""
    keys = ('value', 'label', 'choices', 'samples', 'placeholder', 'info')
    return json.dumps([{k: c['props'].get(k) for k in keys} for c in config['components']], default=str)


def _served_config(monkeypatch, argv):
    """What main(argv) would serve: the page's config, without serving it."""
    served = []
    monkeypatch.setattr(demo, 'launch_app', lambda app, **kw: served.append((app, kw)))
    assert demo.main(argv, prog='app.py') == 0
    (app, kwargs), = served
    config = app.get_config_file()
    radio, = [c['props'] for c in config['components'] if c['type'] == 'radio']
    datasets = [c['props'] for c in config['components'] if c['type'] == 'dataset']
    examples = [sample[0]['orig_name'] for d in datasets for sample in d['samples']]
    return config, [choice[1] for choice in radio['choices']], examples, kwargs


def test_app_default_is_the_bundled_cifar10_demo(monkeypatch):
    """`python app.py` as README runs it: the zoo MiSLAS model, both zoo baselines, the CIFAR-10 examples."""
    config, choices, examples, kwargs = _served_config(monkeypatch, [])
    assert choices == [label for label, _ in ZOO_BASELINES]
    assert examples == [Path(p).name for p in example_images()]
    assert all(name in _page_text(config) for name in CIFAR10_NAMES)  # the check below can see class names
    assert kwargs['server_port'] == 7860 and kwargs['server_name'] == '127.0.0.1'


def test_app_custom_pair_serves_its_own_classes_and_examples(monkeypatch, custom_folders, custom_examples):
    stage2, stage1 = map(str, custom_folders)
    config, choices, examples, _ = _served_config(monkeypatch, ['--model', stage2, '--baseline', stage1])
    assert choices == [f'baseline: {stage1}'] and examples == []  # no zoo baselines, no CIFAR-10 examples
    text = _page_text(config)
    assert not CIFAR_WORDS.search(text) and all(name in text for name in CUSTOM_NAMES)
    config, choices, examples, _ = _served_config(monkeypatch, ['--model', stage2, '--baseline', stage1,
                                                                '--examples', str(custom_examples)])
    assert examples == [Path(p).name for p in example_images(str(custom_examples))] and len(examples) == 7
    assert choices == [f'baseline: {stage1}'] and not CIFAR_WORDS.search(_page_text(config))


def test_app_cli_refusals_are_one_line(monkeypatch, capsys, custom_folders, demo_folders, tmp_path):
    stage2, stage1 = map(str, custom_folders)
    other = make_custom_folder(tmp_path / 'other', names=['apple', *CUSTOM_NAMES[:4]])
    shuffled = make_custom_folder(tmp_path / 'shuffled', names=CUSTOM_NAMES[::-1])
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
    monkeypatch.setattr(demo, 'launch_app', lambda *a, **kw: pytest.fail('a refused command line served the app'))
    cases = [(['--baseline', str(other)], "different classes: 5 classes (bicycle"),
             (['--baseline', str(shuffled)], 'the same names in another order'),
             (['--baseline', str(demo_folders[1])], 'different classes: 5 classes (bicycle, cactus, lantern, otter, '
                                                    'violin) vs 10 classes (airplane'),
             ([], 'no baseline model'),
             (['--baseline', stage1, '--examples', str(tmp_path / 'missing')], 'no such folder'),
             (['--baseline', stage1, '--examples', str(tmp_path / 'empty')], 'holds no images')]
    for argv, words in cases:
        assert demo.main(['--model', stage2, *argv], prog='app.py') == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith('app.py: error:') and words in err and '\n' not in err, (argv, err)


@pytest.mark.slow
def test_app_cli_mismatched_classes_exit_2(custom_folders, demo_folders):
    """The real command line: a model and a baseline with different classes is one line and exit 2."""
    result = subprocess.run([sys.executable, str(ROOT / 'app.py'), '--model', str(custom_folders[0]),
                             '--baseline', str(demo_folders[0])], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert result.returncode == 2 and result.stdout == ''
    err = result.stderr.strip()
    assert err.startswith('app.py: error:') and 'different classes' in err and '\n' not in err


@pytest.mark.slow
def test_module_demo_serves_a_custom_pair_through_gradio_client(custom_folders, custom_examples, tmp_path):
    """`python -m mislas_timm.demo` on a fine-tuned-style 5-class pair with --examples: only its classes."""
    from gradio_client import Client, handle_file
    port = free_port()
    log_file = tmp_path / 'server.log'
    with open(log_file, 'w') as log:
        server = subprocess.Popen([sys.executable, '-m', 'mislas_timm.demo', '--model', str(custom_folders[0]),
                                   '--baseline', str(custom_folders[1]), '--examples', str(custom_examples),
                                   '--port', str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, HF_HUB_OFFLINE='1'))
    try:
        url = f'http://127.0.0.1:{port}/'
        _wait_until_served(url, server, log_file)
        config = json.loads(urllib.request.urlopen(url + 'config', timeout=30).read())
        radio, = [c['props'] for c in config['components'] if c['type'] == 'radio']
        assert [choice[1] for choice in radio['choices']] == [f'baseline: {custom_folders[1]}']
        samples = [c['props']['samples'] for c in config['components'] if c['type'] == 'dataset']
        assert [s[0]['orig_name'] for s in samples[0]] == [Path(p).name for p in example_images(str(custom_examples))]
        assert not CIFAR_WORDS.search(_page_text(config))
        client = Client(url, verbose=False)
        for path in example_images(str(custom_examples))[:2]:
            label_m, label_b, full, sentence, table = client.predict(handle_file(path), api_name='/predict')
            assert list(full['mislas']) == list(full['baseline']) == CUSTOM_NAMES
            assert {c['label'] for c in label_m['confidences'] + label_b['confidences']} <= set(CUSTOM_NAMES)
            assert len(label_m['confidences']) == 5 and math.isclose(sum(full['mislas'].values()), 1, abs_tol=1e-5)
            assert not CIFAR_WORDS.search(sentence + table) and 'MiSLAS says' in sentence
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert 'Traceback' not in log_file.read_text()
