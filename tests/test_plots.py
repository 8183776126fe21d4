import io

import pytest
import torch
from PIL import Image

from mislas_timm.metrics import calibration_report
from mislas_timm.plots import reliability_diagram, reliability_diagram_png


@pytest.fixture(scope='module')
def report():
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(2000, 10, generator=g) * 2).softmax(1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    return calibration_report(probs, labels)


def test_png_decodes_with_expected_size(report):
    png = reliability_diagram_png(report['reliability'], report['ece'], report['top1'],
                                  title='ResNet-32, CIFAR-10-LT IF100, MiSLAS (a long title that wraps over two lines)')
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == 'PNG' and image.size == (400, 500)


def test_figure_has_diagram_and_histogram(report):
    bins = report['reliability']
    fig = reliability_diagram(bins, report['ece'], report['top1'])
    assert len(fig.axes) == 2
    top, hist = fig.axes
    assert top.get_shared_x_axes().joined(top, hist)
    n = sum(bins['counts'])
    assert n == report['num_samples']
    heights = [p.get_height() for p in hist.patches]
    assert heights == pytest.approx([c / n for c in bins['counts']], rel=1e-12)
    assert sum(heights) == pytest.approx(1.0)
    # the histogram's bars sit on the diagram's bins
    assert [p.get_x() for p in hist.patches] == pytest.approx(bins['edges'][:-1])
    # top panel: the accuracy bars first (empty bins drawn at 0), then the gaps
    accs = [a if a is not None else 0.0 for a in bins['accuracies']]
    assert [p.get_height() for p in top.patches[:len(accs)]] == pytest.approx(accs)
    # vertical lines at the average confidence and the accuracy
    mean_conf = sum(k * c for k, c in zip(bins['counts'], bins['confidences']) if k) / n
    xs = sorted(line.get_xdata()[0] for line in hist.lines)
    assert xs == pytest.approx(sorted([mean_conf, report['top1']]), rel=1e-9)
    assert top.get_ylabel() == 'Accuracy' and hist.get_xlabel() == 'Confidence'


def test_figure_defaults_from_bins_and_empty_bins():
    bins = {'edges': [0.0, 0.25, 0.5, 0.75, 1.0], 'counts': [0, 0, 3, 1],
            'accuracies': [None, None, 2 / 3, 1.0], 'confidences': [None, None, 0.6, 0.9]}
    fig = reliability_diagram(bins)  # ECE and top-1 computed from the bins
    text = fig.axes[0].texts[0].get_text()
    assert 'ECE = 7.50%' in text and 'Top-1 = 75.0%' in text  # 3/4 * (2/3 - 0.6) + 1/4 * (1 - 0.9)
    assert [p.get_height() for p in fig.axes[1].patches] == pytest.approx([0, 0, 0.75, 0.25])
    png = reliability_diagram_png(bins, 0.075, 0.75)
    assert Image.open(io.BytesIO(png)).size == (400, 500)
