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
(Markdown) and the top-5 table (Markdown).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError

from .data.hf import to_model_mode
from .hub import HubError, load_model, resolve_source
from .metrics import class_groups

__all__ = ['MAX_PIXELS', 'DemoError', 'DemoModel', 'HubError', 'load_demo_model', 'load_models', 'open_image',
           'predict_pair', 'build_app', 'EXAMPLES_DIR', 'example_images']

MAX_PIXELS = 40_000_000
EXAMPLES_DIR = Path(__file__).parent / 'assets' / 'examples'


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


def example_images() -> List[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob('*.png'))


def build_app(mislas: DemoModel, baselines: Dict[str, DemoModel], default_baseline: Optional[str] = None):
    """The gr.Blocks page. ``baselines`` maps a choice label to a loaded model."""
    import gradio as gr

    if not baselines:
        raise ValueError('build_app needs at least one baseline model')
    choices = list(baselines)
    default_baseline = default_baseline or choices[0]

    def predict(image_path, baseline_choice):
        try:
            image = open_image(image_path)
            return predict_pair(mislas, baselines[baseline_choice or default_baseline], image)
        except DemoError as err:
            raise gr.Error(str(err)) from None

    def preview(image_path):
        if not image_path:
            return None
        try:
            image = open_image(image_path)
        except DemoError as err:
            raise gr.Error(str(err)) from None
        # Show CIFAR-sized inputs enlarged (pixelated, as the model sees them), large ones reduced.
        scale = 192 / max(image.size)
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.NEAREST if scale > 1 else Image.BILINEAR)

    with gr.Blocks(title='MiSLAS calibration demo') as app:
        gr.Markdown('# Calibrated long-tailed recognition: MiSLAS vs. an over-confident baseline\n'
                    'Models trained on long-tailed data are over-confident. Upload an image (or pick an example, '
                    'tail classes included) and compare how sure each model is. Confidences are in percent; '
                    'head / medium / tail marks how frequent the class was in training.')
        baseline_state = gr.State(default_baseline)
        with gr.Row():
            with gr.Column(scale=1):
                # A gr.File, not a gr.Image: gr.Image decodes uploads before the handler runs, so a
                # corrupt or huge file would end in Gradio's generic error instead of open_image's message.
                image = gr.File(label='Image file', file_types=['image'], type='filepath', elem_id='upload')
                shown = gr.Image(label='Your image', interactive=False, height=200, elem_id='preview')
                baseline_radio = gr.Radio(choices, value=default_baseline, label='Baseline to compare against')
                button = gr.Button('Predict', variant='primary')
                examples = example_images()
                if examples:
                    gr.Examples(examples, inputs=image, label='Examples (CIFAR-10 test images)')
            with gr.Column(scale=2):
                sentence = gr.Markdown(elem_id='sentence')
                with gr.Row():
                    label_m = gr.Label(num_top_classes=5, label=mislas.title, elem_id='label-mislas')
                    label_b = gr.Label(num_top_classes=5, label='Baseline', elem_id='label-baseline')
                table = gr.Markdown(elem_id='top5-table')
                with gr.Accordion('Full probability vectors (JSON)', open=False):
                    vectors = gr.JSON(label='probabilities')
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
        button.click(predict, inputs=[image, baseline_state], outputs=[label_m, label_b, vectors, sentence, table],
                     api_name='predict')
    return app


def load_models(model: str, baselines: Sequence[Tuple[str, str]]) -> Tuple[DemoModel, Dict[str, DemoModel]]:
    """The MiSLAS model and the baselines (label, source); a bad source raises HubError."""
    mislas = load_demo_model(model, title='MiSLAS')
    loaded = {label: load_demo_model(source, title=label) for label, source in baselines}
    return mislas, loaded

