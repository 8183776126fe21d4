"""The Gradio calibration demo: MiSLAS confidence next to an over-confident baseline's.

    python -m mislas_timm.demo [--model SOURCE] [--baseline SOURCE] [--examples DIR] [--port N] [--share]

(``python app.py`` is the same command.) SOURCE is anything ``mislas_timm.load_model`` takes: a zoo
name, a run or Hub folder (``RUN/stage2``), ``local-dir:PATH`` or ``hf-hub:ORG/NAME``. The page shows
the models' own classes, whatever their number. The bundled CIFAR-10-LT baselines are offered only
next to a model with CIFAR-10's classes, the bundled CIFAR-10 example images likewise (or the images of
``--examples DIR``: the images in DIR and one folder down, e.g. a ``test/<class>/`` folder). A model and
a baseline with different classes are refused before anything is served.

Everything the page shows comes from the models' Hub folders: preprocessing from config.json
(via timm), class names from its ``label_names``, training counts and the head / medium / tail rank
split from its ``mislas`` block, top-1 / ECE from metrics.json and the reliability diagram from
reliability.png (nothing is recomputed at start-up).

Image policy: any format PIL opens; grayscale, RGBA and palette images are converted to RGB
(transparency composited on white); images above ``MAX_PIXELS`` (40 megapixels) are refused with
a message rather than decoded, as are truncated files and files that are not images. Nothing is
written outside Gradio's own upload cache.

API: ``predict`` (``api_name="predict"``) takes the image and returns, in this order: the MiSLAS
top-5 ``gr.Label``, the baseline top-5 ``gr.Label``, a JSON object ``{"mislas": {class: p, ...},
"baseline": {class: p, ...}}`` with both full probability vectors, the plain-words comparison
(Markdown) and the top-5 table (Markdown). The page also says how the upload was resized for the
models (``input_note``); that note is a separate page event, not part of the API's output.

Clicking an example runs the prediction at once; when the example's file or folder name is one of
the classes (``ship_0001.png``, ``test/ship/0001.png``) the comparison also says which model got it
right (an upload's file name is never taken for its class). A refused upload shows its message on
the page and writes one line to the ``mislas_timm.demo`` logger (no traceback); the server keeps
serving. The page's CSS (``CSS``) goes to ``launch``, as Gradio 6 wants: use ``launch_app`` or pass
``css=CSS`` yourself.
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError

from .data.hf import to_model_mode
from .hub import HubError, load_model, resolve_source
from .metrics import class_groups
from .models.pretrained_tags import CIFAR10_CLASSES

__all__ = ['MAX_PIXELS', 'CSS', 'DemoError', 'DemoModel', 'HubError', 'load_demo_model', 'load_models', 'open_image',
           'predict_pair', 'input_note', 'classes_note', 'build_app', 'launch_app', 'configure_logging',
           'EXAMPLES_DIR', 'IMAGE_SUFFIXES', 'MAX_EXAMPLES', 'example_images', 'default_examples', 'example_class',
           'check_same_classes', 'zoo_baselines', 'DEFAULT_MODEL', 'ZOO_BASELINES', 'share_reachable', 'main']

MAX_PIXELS = 40_000_000
EXAMPLES_DIR = Path(__file__).parent / 'assets' / 'examples'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.gif', '.bmp')
MAX_EXAMPLES = 40  # a --examples folder may be a whole test split: the page shows a sample of it, every class
DEFAULT_MODEL = 'resnet32_cifar.cifar10_lt_if100_mislas'
ZOO_BASELINES = [('CE-only stage 1 (most over-confident)', 'resnet32_cifar.cifar10_lt_if100_ce'),
                 ('mixup stage 1', 'resnet32_cifar.cifar10_lt_if100_mixup')]
# Named, not __name__: under `python -m mislas_timm.demo` this file also runs as __main__.
log = logging.getLogger('mislas_timm.demo')

# Gradio's Markdown tables break words anywhere (word-break: break-word), which split headers such as
# "MiSLAS" or cells such as "automobile" mid-word in a narrow window. Here words stay whole: lines break
# at spaces only, headers stay on one line where there is room, a narrow window gets a smaller font, and
# the table scrolls sideways rather than breaking a word if it still does not fit.
CSS = """
#top5-table { overflow-x: auto; }
#top5-table th, #top5-table td { word-break: normal !important; overflow-wrap: normal !important;
                                 hyphens: none !important; }
#top5-table th { white-space: nowrap; }
#input-note, #classes-note { font-size: 0.9em; }
#examples img { image-rendering: pixelated; }
@media (max-width: 640px) {
  #top5-table table { font-size: 12px; }
  #top5-table th, #top5-table td { padding: 4px 6px !important; }
  #top5-table th { white-space: normal; }
}
"""

# After a prediction, bring the result into view if it is not (in a narrow window it sits below the
# examples and the Predict button); a result already on screen is left where it is.
SCROLL_TO_RESULT_JS = """() => {
  const el = document.querySelector('#sentence');
  if (!el) return;
  const box = el.getBoundingClientRect();
  if (box.top < 0 || box.top > 0.5 * window.innerHeight) el.scrollIntoView({behavior: 'smooth', block: 'start'});
}"""


class DemoError(ValueError):
    """An input the demo cannot use, with a message for the page."""


@dataclass
class DemoModel:
    """A loaded model with what the page needs to show about it."""
    source: str
    title: str
    model: torch.nn.Module
    transform: object
    label_names: List[str]
    class_counts: Optional[List[int]]
    groups: Optional[List[str]]
    metrics: Optional[Dict] = None
    reliability_png: Optional[str] = None
    extra: Dict = field(default_factory=dict)

    @torch.no_grad()
    def probabilities(self, image: Image.Image) -> torch.Tensor:
        in_chans = int(self.model.pretrained_cfg.get('input_size', (3,))[0])
        x = self.transform(to_model_mode(image, in_chans)).unsqueeze(0)
        return self.model(x).float().softmax(dim=1)[0]

    def summary_markdown(self) -> str:
        if not self.metrics:
            return f'**{self.title}**: test metrics not available (no metrics.json with the model)'
        m = self.metrics
        return (f'**{self.title}**  \n`{self.source}`  \n'
                f'top-1 **{100 * m["top1"]:.2f}%**, ECE **{100 * m["ece"]:.2f}%** '
                f'on {m.get("num_samples", "?")} images of the {m.get("split", "test")} split')


def _folder_file(name: str, filename: str) -> Optional[str]:
    """A file of the model's Hub folder (local, or from the Hugging Face cache for hf-hub:)."""
    if name.startswith('local-dir:'):
        path = Path(name[len('local-dir:'):]) / filename
        return str(path) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(name[len('hf-hub:'):], filename)
    except Exception:  # noqa: BLE001 - not published with the model, or offline: the page says so
        return None


def load_demo_model(source: str, title: Optional[str] = None) -> DemoModel:
    """Load any model source with its preprocessing, class names, counts, groups and test metrics."""
    import timm

    name = resolve_source(source)
    model = load_model(source)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    mislas = getattr(model, 'mislas_config', {}) or {}
    counts = mislas.get('class_counts')
    split = mislas.get('rank_split')
    groups = class_groups(counts, split) if counts and split else None
    metrics_file = _folder_file(name, 'metrics.json')
    metrics = json.loads(Path(metrics_file).read_text()) if metrics_file else None
    return DemoModel(source=source, title=title or source, model=model, transform=transform,
                     label_names=list(labels), class_counts=counts, groups=groups, metrics=metrics,
                     reliability_png=_folder_file(name, 'reliability.png'))


def open_image(path: Optional[str]) -> Image.Image:
    """Open and fully decode an uploaded file, refusing what is not a usable image."""
    if not path:
        raise DemoError('Upload an image (or pick an example) first.')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DemoError(f'The image is {width}x{height} pixels; the demo accepts at most '
                                    f'{MAX_PIXELS // 1_000_000} megapixels. Downscale it and try again.')
                image.load()  # decode now: a truncated file fails here, not inside the model call
                return to_model_mode(image.copy())
    except DemoError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DemoError(f'The image is too large; the demo accepts at most {MAX_PIXELS // 1_000_000} megapixels.') from None
    except UnidentifiedImageError:
        raise DemoError('This file is not an image the demo can read (use PNG, JPEG, WebP, GIF or BMP).') from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DemoError(f'The image could not be decoded (truncated or corrupt file: {err}).') from None


def _top(probs: torch.Tensor, names: Sequence[str], k: int = 5) -> Dict[str, float]:
    values, idx = probs.topk(min(k, probs.numel()))
    return {names[i]: float(v) for v, i in zip(values.tolist(), idx.tolist())}


def _group_cell(dm: DemoModel, cls: int) -> str:
    if dm.groups is None or dm.class_counts is None:
        return 'n/a'
    return f'{dm.groups[cls]} ({dm.class_counts[cls]} training images)'


def predict_pair(mislas: DemoModel, baseline: DemoModel, image: Image.Image,
                 true_class: Optional[int] = None) -> Tuple[Dict, Dict, Dict, str, str]:
    """(MiSLAS top-5, baseline top-5, both full vectors, the comparison sentence, the top-5 table).

    ``true_class`` (an example's known class) adds to the sentence which model got it right."""
    if mislas.label_names != baseline.label_names:
        raise DemoError('The two models have different classes; pick models trained on the same data set.')
    p_m = mislas.probabilities(image)
    p_b = baseline.probabilities(image)
    names = mislas.label_names
    full = {'mislas': {n: float(p) for n, p in zip(names, p_m.tolist())},
            'baseline': {n: float(p) for n, p in zip(names, p_b.tolist())}}
    top_m, top_b = _top(p_m, names), _top(p_b, names)
    b_cls, m_cls = int(p_b.argmax()), int(p_m.argmax())
    sentence = (f'The baseline says **{100 * float(p_b[b_cls]):.0f}% {names[b_cls]}**, '
                f'MiSLAS says **{100 * float(p_m[m_cls]):.0f}% {names[m_cls]}**.')
    if b_cls != m_cls:
        sentence += f' (MiSLAS gives {names[b_cls]} {100 * float(p_m[b_cls]):.0f}%.)'
    if true_class is not None:
        sentence += f' The example\'s label is **{names[true_class]}**: ' + _verdict(true_class, m_cls, b_cls, p_m, p_b)
    rows = ['| class | MiSLAS | baseline | group (training images) |', '|---|---|---|---|']
    for cls in p_m.topk(min(5, len(names))).indices.tolist():
        rows.append(f'| {names[cls]} | {100 * float(p_m[cls]):.1f}% | {100 * float(p_b[cls]):.1f}% '
                    f'| {_group_cell(mislas, cls)} |')
    return top_m, top_b, full, sentence, '\n'.join(rows)


def _verdict(true_class: int, m_cls: int, b_cls: int, p_m: torch.Tensor, p_b: torch.Tensor) -> str:
    if m_cls == true_class and b_cls == true_class:
        return 'both models are right.'
    if m_cls == true_class:
        return 'only MiSLAS is right.'
    if b_cls == true_class:
        return 'only the baseline is right.'
    # Both wrong: the case calibration is about, say how sure each was of its mistake.
    less = float(p_m[m_cls]) < float(p_b[b_cls])
    return 'both models are wrong' + (', MiSLAS less confidently.' if less else '.')


def _model_input_size(dm: DemoModel) -> Tuple[int, int]:
    """(width, height) of the model's input, from its pretrained config."""
    size = dm.model.pretrained_cfg.get('input_size') or (3, 0, 0)
    return int(size[-1]), int(size[-2])


def _input_geometry(dm: DemoModel, size: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """What the model's eval transform does to an image of ``size`` (width, height): the size after
    its resize step and the final size after its crop step (arithmetic only, nothing is decoded)."""
    from torchvision import transforms as T

    w, h = size
    resized = final = (w, h)
    for t in getattr(dm.transform, 'transforms', []):
        if isinstance(t, T.Resize):
            target = t.size
            if isinstance(target, int) or len(target) == 1:  # shorter side to target, as torchvision does
                target = target if isinstance(target, int) else target[0]
                short, long = min(w, h), max(w, h)
                new_short, new_long = target, int(target * long / short)
                if t.max_size is not None and new_long > t.max_size:
                    new_short, new_long = int(t.max_size * new_short / new_long), t.max_size
                w, h = (new_short, new_long) if w <= h else (new_long, new_short)
            else:
                h, w = int(target[0]), int(target[1])
            resized = final = (w, h)
        elif isinstance(t, T.CenterCrop):
            h, w = int(t.size[0]), int(t.size[1])
            final = (w, h)
        elif type(t).__name__ in ('ToTensor', 'MaybeToTensor', 'PILToTensor', 'MaybePILToTensor', 'Normalize'):
            break
        else:  # a transform this function does not model: say "resized to the model's input size"
            final = _model_input_size(dm)
            return final, final
    return resized, final


def _fmt(size: Tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def input_note(models: Sequence[DemoModel], size: Tuple[int, int]) -> str:
    """One sentence per distinct preprocessing: how an image of ``size`` (width, height) reaches the models."""
    lines: List[str] = []
    for dm in models:
        resized, final = _input_geometry(dm, size)
        if resized == size and final == size:
            line = f'The image is {_fmt(size)} pixels, the models\' input size: used as is.'
        elif resized == final:
            line = (f'Your image was resized from {_fmt(size)} to {_fmt(final)} pixels (the models\' input '
                    f'size) before the prediction, so fine detail is lost.')
        elif resized == size:
            line = (f'Your image was center-cropped from {_fmt(size)} to {_fmt(final)} pixels (the models\' '
                    f'input size): the models do not see its edges.')
        else:
            line = (f'Your image was resized from {_fmt(size)} to {_fmt(resized)} and center-cropped to '
                    f'{_fmt(final)} pixels (the models\' input size): fine detail is lost and the models do '
                    f'not see its edges.')
        lines.append(line)
    if len(set(lines)) == 1:
        return lines[0]
    return '  \n'.join(f'{dm.title}: {line}' for dm, line in zip(models, lines))


def _upload_size(path: Optional[str]) -> Optional[Tuple[int, int]]:
    """The (width, height) an upload declares in its header, or None when it is not readable."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - the prediction itself reports a bad file
        return None


def classes_note(model: DemoModel, max_names: int = 30) -> str:
    """The permanent caveat: the models only know their training classes (named, up to ``max_names``)."""
    names = model.label_names
    which = f'the {len(names)} CIFAR-10 classes' if tuple(names) == CIFAR10_CLASSES else f'{len(names)} classes'
    listed = ', '.join(names[:max_names]) + (f' and {len(names) - max_names} more' if len(names) > max_names else '')
    return (f'**The models know only {which}**: {listed}. Every image gets one of these, with a '
            f'confidence, even if it shows something else (or is pure noise).')


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith('.'))


def example_images(folder: Optional[str] = None, limit: int = MAX_EXAMPLES) -> List[str]:
    """The bundled CIFAR-10 test images, or at most ``limit`` images of ``folder``: its own and those one
    folder down (``test/<class>/*.png``), taken in turn from each subfolder so that every class shows."""
    if folder is None:
        return sorted(str(p) for p in EXAMPLES_DIR.glob('*.png'))
    folder = Path(folder).expanduser()
    groups = [_images_in(folder)] + [_images_in(sub) for sub in sorted(folder.iterdir())
                                     if sub.is_dir() and not sub.name.startswith('.')]
    groups = [g for g in groups if g]
    picked: List[List[Path]] = [[] for _ in groups]
    for rank in range(max((len(g) for g in groups), default=0)):
        for g, chosen in zip(groups, picked):
            if rank < len(g) and sum(map(len, picked)) < limit:
                chosen.append(g[rank])
    return [str(p) for chosen in picked for p in chosen]


def default_examples(model: DemoModel) -> List[str]:
    """The bundled examples for a model with CIFAR-10's classes; none for any other model."""
    return example_images() if tuple(model.label_names) == CIFAR10_CLASSES else []


def example_class(path: str, label_names: Sequence[str]) -> Optional[int]:
    """The class an example's name states: its folder (``test/ship/0001.png``) or its file name
    (``ship_0001.png``, ``ship.png``); None when neither is one of ``label_names``."""
    p = Path(path)
    if p.parent.name in label_names:
        return list(label_names).index(p.parent.name)
    stem = p.stem
    matches = [n for n in label_names if stem == n or stem.startswith(f'{n}_')]
    return list(label_names).index(max(matches, key=len)) if matches else None


def check_same_classes(model: DemoModel, baseline: DemoModel) -> None:
    """Refuse a baseline whose classes (names, in order) are not the model's, in one line."""
    if model.label_names == baseline.label_names:
        return

    def show(dm: DemoModel) -> str:
        names = dm.label_names
        return f'{len(names)} classes ({", ".join(names[:6])}{", ..." if len(names) > 6 else ""})'

    same = sorted(model.label_names) == sorted(baseline.label_names)
    raise DemoError(f'the model {model.source} and the baseline {baseline.source} have different classes: '
                    f'{show(model)} vs {show(baseline)}' + (' (the same names in another order)' if same else '')
                    + '; pass a baseline trained on the same classes')


def _refuse(err: DemoError, path: Optional[str] = None, log_it: bool = True):
    """A gr.Error for the page that Gradio prints no traceback for; one log line instead."""
    import gradio as gr

    if log_it:
        log.warning('refused an upload%s: %s', f' ({Path(path).name})' if path else '', err)
    return gr.Error(str(err), print_exception=False)


def build_app(mislas: DemoModel, baselines: Dict[str, DemoModel], default_baseline: Optional[str] = None,
              examples: Optional[Sequence[str]] = None, examples_label: Optional[str] = None):
    """The gr.Blocks page. ``baselines`` maps a choice label to a loaded model (each with the model's
    classes, else DemoError). ``examples``: image paths to click, default ``default_examples(mislas)``.
    Launch it with ``launch_app`` (or pass ``css=CSS`` to ``launch``)."""
    import gradio as gr

    if not baselines:
        raise ValueError('build_app needs at least one baseline model')
    for baseline in baselines.values():
        check_same_classes(mislas, baseline)
    choices = list(baselines)
    default_baseline = default_baseline or choices[0]
    examples = default_examples(mislas) if examples is None else [str(p) for p in examples]
    bundled = bool(examples) and all(Path(p).parent == EXAMPLES_DIR for p in examples)
    if examples_label is None:
        examples_label = ('Examples (CIFAR-10 test images): click one to predict' if bundled
                          else 'Examples: click one to predict')

    def run(image_path, baseline_choice, true_class=None):
        baseline = baselines[baseline_choice or default_baseline]
        try:
            image = open_image(image_path)
            return (*predict_pair(mislas, baseline, image, true_class), input_note([mislas, baseline], image.size))
        except DemoError as err:
            raise _refuse(err, image_path) from None

    def predict(image_path, baseline_choice):
        return run(image_path, baseline_choice)[:5]

    def note(image_path, baseline_choice):
        size = _upload_size(image_path)
        return input_note([mislas, baselines[baseline_choice or default_baseline]], size) if size else ''

    def run_example(example_path, label, baseline_choice):
        # The class comes from the example's original name (carried in a hidden field): Gradio hands
        # the handler a copy in its cache, whose folder is not the class folder any more.
        true_class = mislas.label_names.index(label) if label in mislas.label_names else None
        return (example_path, *run(example_path, baseline_choice, true_class))

    def preview(image_path):
        if not image_path:
            return None
        try:
            image = open_image(image_path)
        except DemoError as err:
            raise _refuse(err, image_path, log_it=False) from None  # the prediction logs it, if one is asked for
        # Show CIFAR-sized inputs enlarged (pixelated, as the model sees them), large ones reduced.
        scale = 192 / max(image.size)
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.NEAREST if scale > 1 else Image.BILINEAR)

    with gr.Blocks(title='MiSLAS calibration demo') as app:
        # Created first, placed below: the examples (under the upload box) write into the results.
        sentence = gr.Markdown(elem_id='sentence', render=False)
        resize_md = gr.Markdown(elem_id='input-note', render=False)
        label_m = gr.Label(num_top_classes=5, label=mislas.title, elem_id='label-mislas', render=False)
        label_b = gr.Label(num_top_classes=5, label='Baseline', elem_id='label-baseline', render=False)
        table = gr.Markdown(elem_id='top5-table', render=False)
        vectors = gr.JSON(label='probabilities', render=False)
        outputs = [label_m, label_b, vectors, sentence, table]  # the /predict API's outputs, in this order

        how = ('Upload an image (or click an example, tail classes included)' if bundled
               else 'Upload an image (or click an example)' if examples else 'Upload an image')
        gr.Markdown('# Calibrated long-tailed recognition: MiSLAS vs. an over-confident baseline\n'
                    f'Models trained on long-tailed data are over-confident. {how} and compare how sure each '
                    'model is. Confidences are in percent; head / medium / tail marks how frequent the class '
                    'was in training.')
        baseline_state = gr.State(default_baseline)
        with gr.Row():
            with gr.Column(scale=1):
                # A gr.File, not a gr.Image: gr.Image decodes uploads before the handler runs, so a
                # corrupt or huge file would end in Gradio's generic error instead of open_image's message.
                image = gr.File(label='Image file', file_types=['image'], type='filepath', elem_id='upload')
                if examples:
                    # The examples load into a hidden gr.Image, so they show as thumbnails rather than
                    # file names; a click predicts at once and also puts the file into the upload box.
                    # The baseline column is all None: Gradio leaves the chosen baseline as it is.
                    carrier = gr.Image(type='filepath', visible=False, elem_id='example-carrier')
                    truth = gr.Textbox(visible=False)
                    rows = []
                    for path in examples:
                        cls = example_class(path, mislas.label_names)
                        rows.append([path, '' if cls is None else mislas.label_names[cls], None])
                    gr.Examples(rows, inputs=[carrier, truth, baseline_state], fn=run_example,
                                outputs=[image, *outputs, resize_md], run_on_click=True, cache_examples=False,
                                label=examples_label, examples_per_page=min(len(examples), MAX_EXAMPLES),
                                elem_id='examples', api_name=False, visible_columns=[0])
                shown = gr.Image(label='Your image', interactive=False, height=200, elem_id='preview')
                baseline_radio = gr.Radio(choices, value=default_baseline, label='Baseline to compare against')
                button = gr.Button('Predict', variant='primary')
            with gr.Column(scale=2):
                gr.Markdown(classes_note(mislas), elem_id='classes-note')
                sentence.render()
                resize_md.render()
                with gr.Row():
                    label_m.render()
                    label_b.render()
                table.render()
                with gr.Accordion('Full probability vectors (JSON)', open=False):
                    vectors.render()
        gr.Markdown('## Why the confidences differ: reliability on the test split\n'
                    'Bars below the diagonal mean over-confidence; ECE is the average gap (lower is better).')
        with gr.Row():
            for dm in [mislas, *baselines.values()]:
                with gr.Column():
                    gr.Markdown(dm.summary_markdown())
                    if dm.reliability_png:
                        gr.Image(dm.reliability_png, show_label=False, interactive=False, height=300)
                    else:
                        gr.Markdown('reliability diagram: not available')
        image.change(preview, inputs=image, outputs=shown, api_name=False)
        baseline_radio.change(lambda choice: choice, inputs=baseline_radio, outputs=baseline_state,
                              api_name=False)
        event = button.click(predict, inputs=[image, baseline_state], outputs=outputs, api_name='predict')
        event.success(note, inputs=[image, baseline_state], outputs=resize_md, api_name=False)
        event.failure(lambda: '', outputs=resize_md, api_name=False)
        sentence.change(None, js=SCROLL_TO_RESULT_JS, api_name=False)
    return app


def launch_app(app, **launch_kwargs):
    """Queue and launch the page with its CSS (Gradio 6 takes CSS in ``launch``, not in ``gr.Blocks``)."""
    app.queue(default_concurrency_limit=launch_kwargs.pop('concurrency_limit', 4))
    return app.launch(css=CSS, **launch_kwargs)


def configure_logging(level: int = logging.INFO) -> None:
    """Print the demo's log lines (such as a refused upload) to stderr, one line each."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s'))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def load_models(model: str, baselines: Sequence[Tuple[str, str]]) -> Tuple[DemoModel, Dict[str, DemoModel]]:
    """The MiSLAS model and the baselines (label, source); a bad source raises HubError."""
    mislas = load_demo_model(model, title='MiSLAS')
    loaded = {label: load_demo_model(source, title=label) for label, source in baselines}
    return mislas, loaded


def zoo_baselines(label_names: Sequence[str]) -> List[Tuple[str, str]]:
    """(label, zoo name) of the bundled baselines whose classes are ``label_names``. Only shipped
    folders count (read from their config.json, nothing is loaded), so this never waits on the network."""
    from . import zoo

    out = []
    for label, name in ZOO_BASELINES:
        entry = zoo.get(name)
        config = entry.folder / 'config.json' if entry is not None else None
        if config is None or not config.is_file():
            continue
        try:
            names = json.loads(config.read_text()).get('label_names')
        except (OSError, json.JSONDecodeError):
            continue  # a broken bundled folder is the zoo tests' business; the demo just does not offer it
        if list(names or []) == list(label_names):
            out.append((label, name))
    return out


def share_reachable(host: str = 'api.gradio.app', port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


EPILOG = """SOURCE: a zoo name, a run or Hub folder (RUN/stage2), local-dir:PATH or hf-hub:ORG/NAME.
The page shows the models' own classes. The bundled CIFAR-10-LT baselines and example images are offered
only with a model that has CIFAR-10's classes; otherwise pass --baseline (e.g. the run's stage1 folder) and,
for examples to click, --examples DIR (e.g. a test/<class>/ image folder). A model and a baseline with
different classes are refused before anything is served. `python app.py` is the same command."""


def _parser(prog: Optional[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'the calibrated model (default: {DEFAULT_MODEL})')
    p.add_argument('--baseline', help='the baseline to compare against, with the same classes (default: the '
                                      'bundled CE-only model when the model has CIFAR-10\'s classes; the bundled '
                                      'mixup model is one click away)')
    p.add_argument('--examples', metavar='DIR', help='example images to click: the images in DIR and one folder '
                                                     f'down (at most {MAX_EXAMPLES}; default: the bundled CIFAR-10 '
                                                     'test images for a CIFAR-10 model, none otherwise)')
    p.add_argument('--port', type=int, default=7860)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--share', action='store_true', help='also open a public gradio.live link (needs internet)')
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """The demo's command line (``python -m mislas_timm.demo`` and ``python app.py``); returns the exit code."""
    args = _parser(prog).parse_args(argv)
    prog = prog or Path(sys.argv[0]).name

    def fail(message: str) -> int:
        print(f'{prog}: error: {message}', file=sys.stderr)
        return 2

    examples = None
    if args.examples is not None:
        folder = Path(args.examples).expanduser()
        if not folder.is_dir():
            return fail(f'--examples {args.examples}: no such folder; pass a folder of images '
                        f'({", ".join(IMAGE_SUFFIXES)}), or leave --examples out')
        examples = example_images(str(folder))
        if not examples:
            return fail(f'--examples {args.examples} holds no images ({", ".join(IMAGE_SUFFIXES)}) in it or one '
                        'folder down; pass a folder of images, or leave --examples out')
    try:
        mislas = load_demo_model(args.model, title='MiSLAS')
        baselines = {}
        if args.baseline:
            baseline = load_demo_model(args.baseline, title='baseline: ' + args.baseline)
            check_same_classes(mislas, baseline)
            baselines[baseline.title] = baseline
        for label, name in zoo_baselines(mislas.label_names):
            if name != args.baseline:  # already there, under its own label
                baselines[label] = load_demo_model(name, title=label)
        if not baselines:
            return fail(f'no baseline model for {args.model} ({len(mislas.label_names)} classes; the bundled '
                        'baselines know CIFAR-10\'s 10 only): pass --baseline SOURCE, e.g. the stage-1 folder of '
                        'the same run')
        app = build_app(mislas, baselines, examples=examples)
    except (HubError, DemoError) as err:
        return fail(str(err))
    share = args.share
    if share and not share_reachable():
        print(f'{prog}: --share needs internet access to Gradio\'s share servers, which cannot be reached; '
              f'serving locally only at http://{args.host}:{args.port}', file=sys.stderr)
        share = False
    configure_logging()
    launch_app(app, server_name=args.host, server_port=args.port, share=share)
    return 0


if __name__ == '__main__':
    # Run the imported module's main, not this __main__ copy's: one set of module globals.
    from mislas_timm.demo import main as _main
    sys.exit(_main(prog='python -m mislas_timm.demo'))
