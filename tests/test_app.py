"""The demo's functions, the running app through gradio_client, and app.py's command line."""
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from mislas_timm.demo import (MAX_PIXELS, DemoError, classes_note, example_images, input_note, open_image,
                              predict_pair)

from .demo_fixtures import demo_folders, demo_models, free_port, running_app, write_png  # noqa: F401  (fixtures)
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
