"""The Gradio calibration demo: MiSLAS confidence next to an over-confident baseline's.

Everything the page shows comes from the models' Hub folders: preprocessing from config.json
(via timm), training counts and the head / medium / tail rank split from its ``mislas`` block,
top-1 / ECE from metrics.json and the reliability diagram from reliability.png (nothing is
recomputed at start-up).

Image policy: any format PIL opens; grayscale, RGBA and palette images are converted to RGB
(transparency composited on white); images above ``MAX_PIXELS`` (40 megapixels) are refused with
a message rather than decoded, as are truncated files and files that are not images. Nothing is
written outside Gradio's own upload cache.

API: ``predict`` (``api_name="predict"``) takes the image and returns, in this order: the MiSLAS
top-5 ``gr.Label``, the baseline top-5 ``gr.Label``, a JSON object ``{"mislas": {class: p, ...},
"baseline": {class: p, ...}}`` with both full probability vectors, the plain-words comparison
(Markdown) and the top-5 table (Markdown). The page also says how the upload was resized for the
models (``input_note``); that note is a separate page event, not part of the API's output.

Clicking an example runs the prediction at once. A refused upload shows its message on the page
and writes one line to the ``mislas_timm.demo`` logger (no traceback); the server keeps serving.
The page's CSS (``CSS``) goes to ``launch``, as Gradio 6 wants: use ``launch_app`` or pass
``css=CSS`` yourself.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError

from .data.hf import to_model_mode
from .hub import HubError, load_model, resolve_source
from .metrics import class_groups

__all__ = ['MAX_PIXELS', 'CSS', 'DemoError', 'DemoModel', 'HubError', 'load_demo_model', 'load_models', 'open_image',
           'predict_pair', 'input_note', 'classes_note', 'build_app', 'launch_app', 'configure_logging',
           'EXAMPLES_DIR', 'example_images']

MAX_PIXELS = 40_000_000
EXAMPLES_DIR = Path(__file__).parent / 'assets' / 'examples'
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
log = logging.getLogger(__name__)

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


def predict_pair(mislas: DemoModel, baseline: DemoModel, image: Image.Image) -> Tuple[Dict, Dict, Dict, str, str]:
    """(MiSLAS top-5, baseline top-5, both full vectors, the comparison sentence, the top-5 table)."""
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
    rows = ['| class | MiSLAS | baseline | group (training images) |', '|---|---|---|---|']
    for cls in p_m.topk(min(5, len(names))).indices.tolist():
        rows.append(f'| {names[cls]} | {100 * float(p_m[cls]):.1f}% | {100 * float(p_b[cls]):.1f}% '
                    f'| {_group_cell(mislas, cls)} |')
    return top_m, top_b, full, sentence, '\n'.join(rows)


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


def classes_note(model: DemoModel) -> str:
    """The permanent caveat: the models only know their training classes."""
    names = model.label_names
    which = f'the {len(names)} CIFAR-10 classes' if tuple(names) == CIFAR10_CLASSES else f'{len(names)} classes'
    return (f'**The models know only {which}**: {", ".join(names)}. Every image gets one of these, with a '
            f'confidence, even if it shows something else (or is pure noise).')


def example_images() -> List[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob('*.png'))


def _refuse(err: DemoError, path: Optional[str] = None, log_it: bool = True):
    """A gr.Error for the page that Gradio prints no traceback for; one log line instead."""
    import gradio as gr

    if log_it:
        log.warning('refused an upload%s: %s', f' ({Path(path).name})' if path else '', err)
    return gr.Error(str(err), print_exception=False)


def build_app(mislas: DemoModel, baselines: Dict[str, DemoModel], default_baseline: Optional[str] = None):
    """The gr.Blocks page. ``baselines`` maps a choice label to a loaded model. Launch it with
    ``launch_app`` (or pass ``css=CSS`` to ``launch``)."""
    import gradio as gr

    if not baselines:
        raise ValueError('build_app needs at least one baseline model')
    choices = list(baselines)
    default_baseline = default_baseline or choices[0]

    def run(image_path, baseline_choice):
        baseline = baselines[baseline_choice or default_baseline]
        try:
            image = open_image(image_path)
            return (*predict_pair(mislas, baseline, image), input_note([mislas, baseline], image.size))
        except DemoError as err:
            raise _refuse(err, image_path) from None

    def predict(image_path, baseline_choice):
        return run(image_path, baseline_choice)[:5]

    def note(image_path, baseline_choice):
        size = _upload_size(image_path)
        return input_note([mislas, baselines[baseline_choice or default_baseline]], size) if size else ''

    def run_example(example_path, baseline_choice):
        return (example_path, *run(example_path, baseline_choice))

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

        gr.Markdown('# Calibrated long-tailed recognition: MiSLAS vs. an over-confident baseline\n'
                    'Models trained on long-tailed data are over-confident. Upload an image (or click an example, '
                    'tail classes included) and compare how sure each model is. Confidences are in percent; '
                    'head / medium / tail marks how frequent the class was in training.')
        baseline_state = gr.State(default_baseline)
        with gr.Row():
            with gr.Column(scale=1):
                # A gr.File, not a gr.Image: gr.Image decodes uploads before the handler runs, so a
                # corrupt or huge file would end in Gradio's generic error instead of open_image's message.
                image = gr.File(label='Image file', file_types=['image'], type='filepath', elem_id='upload')
                examples = example_images()
                if examples:
                    # The examples load into a hidden gr.Image, so they show as thumbnails rather than
                    # file names; a click predicts at once and also puts the file into the upload box.
                    carrier = gr.Image(type='filepath', visible=False, elem_id='example-carrier')
                    gr.Examples([[path, None] for path in examples], inputs=[carrier, baseline_state],
                                fn=run_example, outputs=[image, *outputs, resize_md], run_on_click=True,
                                cache_examples=False, label='Examples (CIFAR-10 test images): click one to predict',
                                examples_per_page=len(examples), elem_id='examples', api_name=False)
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

