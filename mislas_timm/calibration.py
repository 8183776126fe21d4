"""Post-hoc calibration fitted on a validation split and folded into the final linear layer.

Three methods, each fitted on the VALIDATION split (never the test split) and each a change of the
classifier ``z = W x + b`` (x: the penultimate features, ``forward_head(pre_logits=True)``), so the
result is again a plain timm model with one ``nn.Linear`` head:

=================  ====================================  ==========================================
method             adjusted logits                       fold into (W, b)
=================  ====================================  ==========================================
temperature        z / T                                 W / T, b / T
tau_norm           (w_k . x + b_k) / ||w_k||^tau         w_k / ||w_k||^tau, b_k / ||w_k||^tau
logit_adjust       z_k - tau * log(pi_k)                 W, b_k - tau * log(pi_k)
=================  ====================================  ==========================================

The equations live in the docstrings of :func:`fit_temperature` (temperature scaling, Guo et al.
2017), :func:`tau_norm_weights` (tau-normalisation, Kang et al. 2020, "Decoupling") and
:func:`adjust_logits` (post-hoc logit adjustment, Menon et al. 2021). T is fitted by minimising
the validation NLL; both taus are chosen on validation accuracy over a grid (see
:func:`class_mean_accuracy`). Every ``fold_*`` returns a NEW model (deep copy); the input is left
untouched. Every function refuses bad input with a one-line ``ValueError`` that names the fix.

:func:`fit_on_validation` runs a method on a model's own held-out validation split, rebuilt from its
config.json and checked against the recorded checksum: the logic of ``python -m mislas_timm.calibrate``
(whose command line lives in :mod:`mislas_timm.cli.calibrate`).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics import probability_sum_tolerance
from .stage2 import classifier_path, is_stage2

__all__ = [
    'METHODS', 'TAU_NORM_GRID', 'LOGIT_ADJUST_GRID', 'TAU_NORM_BIAS', 'TEMPERATURE_BOUNDS',
    'check_logits', 'nll', 'class_mean_accuracy',
    'fit_temperature', 'fold_temperature',
    'tau_norm_weights', 'tau_norm_logits', 'fit_tau_norm', 'fold_tau_norm',
    'log_prior', 'adjust_logits', 'fit_logit_adjustment', 'fold_logit_adjustment',
    'predict_features', 'calibrate_model',
    'CalibrationError', 'require_validation_record', 'validation_indices', 'warn_encodings',
    'held_out_validation', 'fit_on_validation',
]

METHODS = ('temperature', 'tau_norm', 'logit_adjust')
TAU_NORM_GRID = tuple(round(0.05 * i, 2) for i in range(41))      # 0, 0.05, ..., 2
LOGIT_ADJUST_GRID = tuple(round(0.1 * i, 1) for i in range(21))   # 0, 0.1, ..., 2
TAU_NORM_BIAS = ('scale', 'drop')
TEMPERATURE_BOUNDS = (1e-4, 1e4)


# ---------------------------------------------------------------------------------------------
# input checks

def _float_matrix(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.dtype.is_floating_point:
        raise ValueError(f'{what} must be a floating-point (num_samples, dim) tensor, got dtype {t.dtype}')
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f'{what} must have shape (num_samples >= 1, dim), got {tuple(t.shape)}')
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f'{what} contain NaN or inf; check the model output (run it in fp32)')
    return t.detach().to('cpu', torch.float64)


def _labels(labels: Any, n: int, num_classes: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(labels)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f'labels must be integer class indices, got dtype {t.dtype}')
    if t.ndim != 1:
        raise ValueError(f'labels must be a 1-D tensor of class indices, got shape {tuple(t.shape)}')
    if t.shape[0] != n:
        raise ValueError(f'{n} rows of {what} but {t.shape[0]} labels: pass exactly one label per row')
    t = t.detach().to('cpu', torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f'labels must lie in [0, {num_classes - 1}] (the {num_classes} classes of the {what}), '
                         f'found {lo}..{hi}; pass the labels of the same data set')
    return t


def check_logits(logits: Any, labels: Any = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(logits, labels)`` as float64 / int64 CPU tensors, or a one-line ``ValueError``.

    Refuses probabilities: a matrix whose rows are all non-negative and sum to 1 (within 1e-3, or
    the input dtype's epsilon where larger: :func:`~mislas_timm.metrics.probability_sum_tolerance`) is
    what ``softmax`` returns, and calibrating it as logits would silently fit the wrong thing.
    Log-probabilities (``log_softmax``) are fine: softmax is invariant to a per-row shift.
    """
    z = _float_matrix(logits, 'logits')
    if z.shape[1] < 2:
        raise ValueError(f'logits must have at least 2 classes (columns), got {z.shape[1]}')
    tolerance = probability_sum_tolerance(torch.as_tensor(logits).dtype)  # bf16 probabilities sum to 1 +- 0.4%
    if float(z.min()) >= 0 and float((z.sum(dim=1) - 1).abs().max()) <= tolerance:
        raise ValueError('these look like probabilities (non-negative rows summing to 1); pass logits '
                         '(the model output before softmax)')
    y = None if labels is None else _labels(labels, z.shape[0], z.shape[1], 'logits')
    return z, y


def _require_every_class(labels: torch.Tensor, num_classes: int, what: str) -> None:
    empty = torch.nonzero(torch.bincount(labels, minlength=num_classes) == 0).flatten().tolist()
    if empty:
        shown = ', '.join(map(str, empty[:10])) + (', ...' if len(empty) > 10 else '')
        noun, verb = ('classes', 'have') if len(empty) > 1 else ('class', 'has')
        raise ValueError(f'{noun} {shown} of {num_classes} {verb} no validation sample, but {what} needs every class '
                         '(tau is chosen on the class-mean validation accuracy); use a validation split with every '
                         'class (train with longtail.val_per_class > 0)')


def _grid(taus: Sequence[float], what: str) -> list:
    grid = sorted({float(t) for t in taus})
    if not grid or not all(math.isfinite(t) for t in grid):
        raise ValueError(f'the {what} grid must be a non-empty list of finite numbers, got {list(taus)!r}')
    return grid


# ---------------------------------------------------------------------------------------------
# metrics used for fitting and selection

def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-1/n sum_i log softmax(z_i / T)[y_i]`` (float64)."""
    z, y = check_logits(logits, labels)
    return float(F.cross_entropy(z / float(temperature), y))


def class_mean_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> float:
    """The selection criterion for tau: ``1/K sum_c acc_c`` (argmax, ties to the lowest class index).

    On a class-balanced validation split (what :func:`mislas_timm.data.longtail.validation_split`
    draws: ``val_per_class`` images of every class) this is exactly top-1 accuracy, and it stays
    the balanced test metric's analogue when a split is not balanced (the Decoupling reference
    also averages per-class accuracies). It needs every class in ``labels``.
    """
    num_classes = num_classes or logits.shape[1]
    _require_every_class(labels, num_classes, 'the class-mean accuracy')
    correct = (logits.argmax(dim=1) == labels).to(torch.float64)
    total = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    return float((hits / total).mean())


def _select(grid: list, score) -> float:
    """The grid value with the highest score; ties go to the smaller value (grid sorted ascending)."""
    best, best_score = grid[0], score(grid[0])
    for tau in grid[1:]:
        s = score(tau)
        if s > best_score:
            best, best_score = tau, s
    return best


# ---------------------------------------------------------------------------------------------
# temperature scaling

def _nll_slope(z: torch.Tensor, y: torch.Tensor, beta: float) -> float:
    """d NLL / d beta at inverse temperature beta: mean_i (sum_k p_ik z_ik - z_iy)."""
    p = torch.softmax(z * beta, dim=1)
    return float(((p * z).sum(dim=1) - z.gather(1, y[:, None]).squeeze(1)).mean())


def fit_temperature(logits: Any, labels: Any, bounds: Tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature scaling: the T > 0 that minimises the validation NLL of ``softmax(z / T)``.

        NLL(T) = 1/n sum_i [ logsumexp_k(z_ik / T) - z_iy_i / T ]

    In beta = 1 / T the NLL is convex (logsumexp of a linear function of beta), with slope
    ``g(beta) = 1/n sum_i (E_{p_i}[z_i] - z_iy_i)`` non-decreasing in beta, so the minimiser is the
    unique root of g. We find it by bisection on log T over ``bounds`` in float64 (about 45
    halvings to a relative precision of 1e-12): deterministic, no step size, no optimiser state.
    Refused when the minimum lies outside ``bounds``: below the lower bound the validation set is
    separated with margin (NLL keeps falling as T -> 0), above the upper bound the logits carry no
    information about the labels (NLL keeps falling towards uniform probabilities as T -> inf).
    Fold: ``W / T``, ``b / T`` (:func:`fold_temperature`).
    """
    z, y = check_logits(logits, labels)
    lo_t, hi_t = float(bounds[0]), float(bounds[1])
    if not (0 < lo_t < hi_t and math.isfinite(hi_t)):
        raise ValueError(f'bounds must be 0 < T_min < T_max < inf, got {bounds!r}')
    if float((z.max(dim=1).values - z.min(dim=1).values).max()) == 0:
        raise ValueError('every row of logits is constant: no temperature changes the probabilities; '
                         'pass the model\'s logits, not a constant')
    lo, hi = math.log(lo_t), math.log(hi_t)     # u = log T; g(exp(-u)) is non-increasing in u
    if _nll_slope(z, y, 1.0 / lo_t) <= 0:
        raise ValueError(f'the validation NLL keeps falling below T = {lo_t:g}: the logits separate the validation '
                         'labels with a margin, so no temperature minimises it; use a larger validation split')
    if _nll_slope(z, y, 1.0 / hi_t) >= 0:
        raise ValueError(f'the validation NLL keeps falling above T = {hi_t:g}: the logits carry no information '
                         'about these labels; check that the labels belong to the logits')
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if _nll_slope(z, y, math.exp(-mid)) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


# ---------------------------------------------------------------------------------------------
# tau-normalisation

def _check_head(weight: Any, bias: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    w = _float_matrix(weight, 'classifier weight')
    if w.shape[0] < 2:
        raise ValueError(f'classifier weight must have one row per class (>= 2), got shape {tuple(w.shape)}')
    b = None
    if bias is not None:
        b = torch.as_tensor(bias).detach().to('cpu', torch.float64)
        if b.shape != (w.shape[0],):
            raise ValueError(f'classifier bias must have shape ({w.shape[0]},) to match the weight, '
                             f'got {tuple(b.shape)}')
    return w, b


def _check_bias_mode(bias_mode: str) -> None:
    if bias_mode not in TAU_NORM_BIAS:
        raise ValueError(f'bias_mode must be one of {TAU_NORM_BIAS} (scale: b_k / ||w_k||^tau; drop: b = 0 as the '
                         f'Decoupling reference), got {bias_mode!r}')


def _row_norms(w: torch.Tensor) -> torch.Tensor:
    norms = w.norm(dim=1)
    zero = torch.nonzero(norms == 0).flatten().tolist()
    if zero:
        raise ValueError(f'classifier weight rows {zero[:10]} are zero: ||w_k||^tau is undefined; '
                         'tau-normalise a trained classifier')
    return norms


def tau_norm_weights(weight: Any, bias: Any = None, tau: float = 1.0,
                     bias_mode: str = 'scale') -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """tau-normalisation (Kang et al. 2020): ``w_k <- w_k / ||w_k||^tau`` for each class row k.

    tau = 0 is the input classifier, tau = 1 gives unit-norm rows; in between it shrinks the large
    norms that head classes get from long-tailed training.

    The bias. The Decoupling reference (``tau_norm.py``) loads ``fc.bias`` but computes the logits
    as ``x @ W_tau^T`` alone, i.e. it drops the bias. Keeping b unchanged next to the rescaled W
    would not be scale-consistent: for a head (c W, c b), which predicts exactly as (W, b), the
    result ``c^(1-tau) W_tau x + c b`` would mix two different powers of c and change the
    predictions. We scale the bias with its row instead (``bias_mode="scale"``, the default):

        z_k = (w_k . x + b_k) / ||w_k||^tau

    i.e. a fixed per-class scale s_k = ||w_k||^-tau of the whole logit, the same form as the LWS
    head (``fold_linear_head`` scales b with s too). It is scale-consistent (c^(1-tau) times the
    logits of (W, b)), keeps the bias the model was trained with, and makes tau = 0 the unchanged
    model, so the grid always contains the input model and the validation accuracy chosen is never
    below it. ``bias_mode="drop"`` reproduces the reference (bias set to 0, also scale-consistent).
    Returns float64 ``(W_tau, b_tau)`` (``b_tau`` None when ``bias`` is None).
    """
    _check_bias_mode(bias_mode)
    w, b = _check_head(weight, bias)
    scale = _row_norms(w).pow(-float(tau))
    w_tau = w * scale[:, None]
    if b is None:
        return w_tau, None
    return w_tau, (b * scale if bias_mode == 'scale' else torch.zeros_like(b))


def tau_norm_logits(features: Any, weight: Any, bias: Any = None, tau: float = 1.0,
                    bias_mode: str = 'scale') -> torch.Tensor:
    """Logits of the tau-normalised classifier: ``x @ W_tau^T + b_tau`` (float64)."""
    w_tau, b_tau = tau_norm_weights(weight, bias, tau, bias_mode)
    x = _float_matrix(features, 'features')
    if x.shape[1] != w_tau.shape[1]:
        raise ValueError(f'features have {x.shape[1]} dimensions but the classifier expects {w_tau.shape[1]}; '
                         'pass the penultimate features (forward_head(..., pre_logits=True))')
    return x @ w_tau.T + (b_tau if b_tau is not None else 0)


def fit_tau_norm(features: Any, labels: Any, weight: Any, bias: Any = None,
                 taus: Sequence[float] = TAU_NORM_GRID, bias_mode: str = 'scale') -> float:
    """The tau of :func:`tau_norm_weights` with the best class-mean validation accuracy over ``taus``.

    ``features``: validation features x (``forward_head(forward_features(img), pre_logits=True)``);
    ``weight`` / ``bias``: the classifier (K, D) / (K,). Ties go to the smaller tau. Every class must
    have a validation sample. The sweep uses ``(w_k / n_k^tau) . x + b_k / n_k^tau =
    (w_k . x + b_k) / n_k^tau`` (n_k = ||w_k||): one matrix product for the whole grid.
    """
    _check_bias_mode(bias_mode)
    w, b = _check_head(weight, bias)
    x = _float_matrix(features, 'features')
    if x.shape[1] != w.shape[1]:
        raise ValueError(f'features have {x.shape[1]} dimensions but the classifier expects {w.shape[1]}; '
                         'pass the penultimate features (forward_head(..., pre_logits=True))')
    y = _labels(labels, x.shape[0], w.shape[0], 'classifier')
    _require_every_class(y, w.shape[0], 'tau-normalisation')
    grid = _grid(taus, 'tau')
    norms = _row_norms(w)
    base = x @ w.T + (b if (b is not None and bias_mode == 'scale') else 0)
    return _select(grid, lambda tau: class_mean_accuracy(base * norms.pow(-tau), y, w.shape[0]))


# ---------------------------------------------------------------------------------------------
# post-hoc logit adjustment

def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log pi_k`` with ``pi_k = N_k / sum_j N_j``, the training class frequencies (float64)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError('class_counts must list the training images of each class (>= 2 classes), '
                         f'got {class_counts!r}')
    bad = torch.nonzero(~(counts > 0) | ~torch.isfinite(counts)).flatten().tolist()
    if bad:
        raise ValueError(f'class_counts must be positive, but class {bad[0]} has {counts[bad[0]].item():g} training '
                         'images, so log(prior) is undefined; pass the training counts '
                         '(config.json mislas.class_counts)')
    return torch.log(counts / counts.sum())


def adjust_logits(logits: Any, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): ``z_k - tau * log(pi_k)`` (float64).

    pi = the training class frequencies (:func:`log_prior`). Subtracting tau * log(pi) undoes the
    label prior the classifier learnt from long-tailed data (tau = 1 is the Bayes-optimal
    correction for the balanced error when softmax(z) estimates p(y | x)). Fold: ``b_k -= tau *
    log(pi_k)``.
    """
    z, _ = check_logits(logits)
    prior = log_prior(class_counts)
    if prior.shape[0] != z.shape[1]:
        raise ValueError(f'class_counts has {prior.shape[0]} classes but the logits have {z.shape[1]}; '
                         'pass the counts of the model\'s training set')
    return z - float(tau) * prior


def fit_logit_adjustment(logits: Any, labels: Any, class_counts: Sequence[int],
                         taus: Sequence[float] = LOGIT_ADJUST_GRID) -> float:
    """The tau of :func:`adjust_logits` with the best class-mean validation accuracy over ``taus``.

    Ties go to the smaller tau; every class must have a validation sample.
    """
    z, y = check_logits(logits, labels)
    prior = log_prior(class_counts)
    if prior.shape[0] != z.shape[1]:
        raise ValueError(f'class_counts has {prior.shape[0]} classes but the logits have {z.shape[1]}; '
                         'pass the counts of the model\'s training set')
    _require_every_class(y, z.shape[1], 'logit adjustment')
    grid = _grid(taus, 'tau')
    return _select(grid, lambda tau: class_mean_accuracy(z - tau * prior, y, z.shape[1]))


# ---------------------------------------------------------------------------------------------
# folding into the model

def _linear(model: nn.Module) -> nn.Linear:
    if not isinstance(model, nn.Module):
        raise ValueError(f'model must be a timm model (torch nn.Module), got {type(model).__name__}')
    if is_stage2(model):
        raise ValueError('model is a stage-2 model with an unfolded head; pass mislas_timm.fold_head(model)')
    try:
        return model.get_submodule(classifier_path(model))
    except TypeError as err:
        raise ValueError(str(err)) from None


def _with_classifier(model: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose classifier holds ``weight`` / ``bias`` (cast to its dtype)."""
    new = copy.deepcopy(model)
    fc = new.get_submodule(classifier_path(new))
    with torch.no_grad():
        fc.weight.copy_(weight.to(fc.weight.dtype))
        if fc.bias is not None and bias is not None:
            fc.bias.copy_(bias.to(fc.bias.dtype))
    return new


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A new model with logits ``z / T``: classifier ``W / T``, ``b / T``."""
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f'temperature must be a finite number > 0, got {temperature!r}')
    fc = _linear(model)
    w = fc.weight.detach().double()
    b = fc.bias.detach().double() if fc.bias is not None else None
    return _with_classifier(model, w / t, b / t if b is not None else None)


def fold_tau_norm(model: nn.Module, tau: float, bias_mode: str = 'scale') -> nn.Module:
    """A new model with the tau-normalised classifier of :func:`tau_norm_weights`."""
    fc = _linear(model)
    w_tau, b_tau = tau_norm_weights(fc.weight.detach(), None if fc.bias is None else fc.bias.detach(),
                                    tau, bias_mode)
    return _with_classifier(model, w_tau, b_tau)


def _require_bias(fc: nn.Linear) -> None:
    if fc.bias is None:
        raise ValueError('the classifier has no bias to fold the logit adjustment into; use a head with bias=True')


def fold_logit_adjustment(model: nn.Module, class_counts: Sequence[int], tau: float) -> nn.Module:
    """A new model with logits ``z_k - tau * log(pi_k)``: classifier bias ``b_k - tau * log(pi_k)``."""
    fc = _linear(model)
    _require_bias(fc)
    prior = log_prior(class_counts)
    if prior.shape[0] != fc.out_features:
        raise ValueError(f'class_counts has {prior.shape[0]} classes but the model has {fc.out_features}; '
                         'pass the counts of the model\'s training set')
    return _with_classifier(model, fc.weight.detach().double(), fc.bias.detach().double() - float(tau) * prior)


# ---------------------------------------------------------------------------------------------
# running a model, and one entry point

@torch.no_grad()
def predict_features(model: nn.Module, loader: Iterable) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, logits, labels)`` over a loader, fp32 on the CPU, in eval mode.

    features = ``forward_head(forward_features(img), pre_logits=True)`` (the classifier's input);
    logits = the model's own ``forward_head``. The first batch checks that the classifier
    (``get_classifier()``, an ``nn.Linear``) applied to the features gives the logits, so that a
    fold into it changes the model's output as computed here.
    """
    fc = _linear(model)
    model.eval()
    device = next(model.parameters()).device
    feats, outs, ys = [], [], []
    for images, labels in loader:
        pooled = model.forward_features(images.to(device))
        x = model.forward_head(pooled, pre_logits=True)
        z = model.forward_head(pooled)
        if not feats:
            if x.ndim != 2 or not torch.allclose(fc(x), z, rtol=1e-4, atol=1e-5 * float(z.abs().max()) + 1e-12):
                raise ValueError(f'{type(model).__name__}: the classifier applied to forward_head(pre_logits=True) '
                                 'does not give the model\'s logits, so a fold into it would not be exact; '
                                 'use a model whose head ends in its get_classifier() linear layer')
        feats.append(x.float().cpu())
        outs.append(z.float().cpu())
        ys.append(labels.cpu())
    if not feats:
        raise ValueError('the loader yielded no batch: the validation split is empty')
    return torch.cat(feats), torch.cat(outs), torch.cat(ys)


def calibrate_model(model: nn.Module, method: str, features: Any, labels: Any,
                    class_counts: Optional[Sequence[int]] = None, *, taus: Optional[Sequence[float]] = None,
                    bias_mode: str = 'scale') -> Tuple[nn.Module, Dict[str, Any]]:
    """Fit ``method`` on validation ``features`` / ``labels`` and fold it: ``(new_model, fitted)``.

    ``fitted`` names the method and its value (``temperature`` or ``tau``; tau-norm adds ``bias``,
    the grid methods ``grid``). The logits are the model's classifier applied to ``features``.
    ``class_counts`` (training images per class) is needed by ``logit_adjust``.
    """
    if method not in METHODS:
        raise ValueError(f'unknown post-hoc method {method!r}: choose one of {", ".join(METHODS)}')
    fc = _linear(model)
    if method == 'logit_adjust':  # refused before the fit, not after it
        _require_bias(fc)
    w = fc.weight.detach().double()
    b = fc.bias.detach().double() if fc.bias is not None else None
    if method == 'tau_norm':
        grid = _grid(taus if taus is not None else TAU_NORM_GRID, 'tau')
        tau = fit_tau_norm(features, labels, w, b, grid, bias_mode)
        return fold_tau_norm(model, tau, bias_mode), {'method': method, 'tau': tau, 'bias': bias_mode,
                                                      'grid': grid, 'selected_by': 'class-mean validation top-1'}
    x = _float_matrix(features, 'features')
    if x.shape[1] != w.shape[1]:
        raise ValueError(f'features have {x.shape[1]} dimensions but the classifier expects {w.shape[1]}; '
                         'pass the penultimate features (forward_head(..., pre_logits=True))')
    logits = x @ w.T + (b if b is not None else 0)
    if method == 'temperature':
        t = fit_temperature(logits, labels)
        return fold_temperature(model, t), {'method': method, 'temperature': t, 'selected_by': 'validation NLL'}
    if class_counts is None:
        raise ValueError('logit adjustment needs the training class counts (config.json mislas.class_counts)')
    grid = _grid(taus if taus is not None else LOGIT_ADJUST_GRID, 'tau')
    tau = fit_logit_adjustment(logits, labels, class_counts, grid)
    return fold_logit_adjustment(model, class_counts, tau), {'method': method, 'tau': tau, 'grid': grid,
                                                             'selected_by': 'class-mean validation top-1'}


# ---------------------------------------------------------------------------------------------
# fitting on the validation split a model's training run held out (what `python -m mislas_timm.calibrate`
# runs; the command line itself is mislas_timm/cli/calibrate.py)

class CalibrationError(ValueError):
    """A calibration run refused for a reason the user can act on (the message names it)."""


def require_validation_record(mislas: Dict[str, Any]) -> None:
    """Refuse a model whose config.json records no held-out validation split."""
    source = mislas.get('val_source')
    if source and source != 'held out of the training split':
        raise CalibrationError(f'this model\'s validation images came from {source}; calibrate fits only on a '
                               'split held out of a long-tail view (longtail.val_per_class), which it rebuilds from '
                               'config.json: fit with mislas_timm.calibration on your own validation logits instead')
    if not mislas.get('val_sha256') or not mislas.get('val_per_class'):
        raise CalibrationError('this model was trained without a held-out validation split (config.json mislas has '
                               'no val_sha256 / val_per_class); retrain with --set longtail.val_per_class=20 (the '
                               'presets\' default) so that post-hoc calibration has a split other than the test '
                               'split to fit on')


def validation_indices(train_labels: Sequence[int], mislas: Dict[str, Any], num_classes: int) -> np.ndarray:
    """The validation indices (into the training split) a training run held out, rebuilt from its
    config.json ``mislas`` block and checked against the recorded ``val_sha256``.

    Long-tail view: ``longtail_counts(n_max, K, imb_factor, profile)`` with n_max = ``mislas['n_max']``
    when recorded, else the largest class of the training split (the presets' default), then
    ``longtail_indices(labels, counts, data_seed)``; then ``validation_split(labels, kept,
    val_per_class, data_seed)``. Without ``imb_factor`` the view is the whole training split.
    """
    from .data.longtail import longtail_view, split_sha256

    require_validation_record(mislas)
    try:
        _, val = longtail_view(train_labels, num_classes, mislas.get('imb_factor'), mislas.get('profile') or 'exp',
                               int(mislas.get('data_seed') or 0), mislas.get('n_max'), int(mislas['val_per_class']))
    except ValueError as err:
        raise CalibrationError(f'cannot rebuild the validation split from this training split: {err}') from None
    found = split_sha256(val)
    if found != mislas['val_sha256']:
        raise CalibrationError(f'the rebuilt validation split (sha256 {found[:12]}...) is not the one the model '
                               f'recorded ({str(mislas["val_sha256"])[:12]}...): pass the training data set the model '
                               f'was trained on (it recorded {mislas.get("dataset")!r}) and its training split '
                               '(--split-train)')
    return val


def warn_encodings(model, model_name: str, dataset: str, encodings: Dict[str, str]) -> None:
    """An ``EncodingMismatchWarning`` for each encoding in ``encodings`` (split -> encoding of its images)
    that differs from the one the model recorded training on, naming the splits that hold it."""
    import warnings

    from .data.encoding import EncodingMismatchWarning, encoding_mismatch

    splits_of: Dict[str, list] = {}
    for split, encoding in encodings.items():
        splits_of.setdefault(encoding, []).append(split)
    for encoding, splits in splits_of.items():
        where = f'{dataset} ({" and ".join(splits)} split{"s" if len(splits) > 1 else ""})'
        problem = encoding_mismatch(model, encoding, model_name, where)
        if problem:
            warnings.warn(f'{problem}: what is fitted and measured on that copy is not what the images it was '
                          'trained on give; calibrate it on those', EncodingMismatchWarning, stacklevel=2)


def held_out_validation(model, dataset, *, split_train: str = 'train', image_column: Optional[str] = None,
                        label_column: Optional[str] = None, train=None):
    """The validation images the model's training run held out of ``split_train`` of ``dataset``,
    rebuilt from its config.json and checked against the recorded ``val_sha256``.

    Returns (the held-out rows as a ``datasets.Dataset``, their indices into the training split, image
    column, label column). ``train``: the training split when already loaded. A model recorded as
    trained on images stored otherwise than the training split's gets an ``EncodingMismatchWarning``
    naming both. Refused in one line (CalibrationError) when the model recorded no such split or the
    rebuilt one differs from it."""
    from .data.encoding import image_encoding, recorded_encoding
    from .data.hf import labels_of, load_split, resolve_columns
    from .evaluation import model_label

    mislas = dict(getattr(model, 'mislas_config', {}) or {})
    num_classes = int(model.get_classifier().out_features)
    require_validation_record(mislas)
    if train is None:
        train = load_split(dataset, split_train)
    image_column, label_column = resolve_columns(train, image_column, label_column)
    if recorded_encoding(model):
        warn_encodings(model, model_label(model), str(dataset), {split_train: image_encoding(train, image_column)})
    labels = labels_of(train, label_column)
    if labels and max(labels) >= num_classes:
        raise CalibrationError(f'the data set has labels up to {max(labels)} but the model has {num_classes} '
                               'classes; pass the data set the model was trained on (check --label-column)')
    val_idx = validation_indices(labels, mislas, num_classes)
    return train.select(val_idx.tolist()), val_idx, image_column, label_column


def fit_on_validation(model, method: str, dataset: str, *, split_train: str = 'train',
                      image_column: Optional[str] = None, label_column: Optional[str] = None,
                      batch_size: int = 500, bias_mode: str = 'scale', train=None):
    """Fit ``method`` on the validation split the model's training run held out (rebuilt from its
    config.json and checked against the recorded sha256) and fold it into the final linear layer.

    Returns (calibrated model, fitted values, validation indices, (validation features, labels)).
    The test split is never touched here. ``train``: the training split when already loaded (else it
    is loaded from ``dataset``). A model recorded as trained on images stored otherwise than the
    training split's gets an ``EncodingMismatchWarning`` naming both (the fit would not be its own).
    """
    from .evaluation import eval_loader

    mislas = dict(getattr(model, 'mislas_config', {}) or {})
    num_classes = int(model.get_classifier().out_features)
    require_validation_record(mislas)
    if method == 'logit_adjust' and len(mislas.get('class_counts') or []) != num_classes:
        raise CalibrationError(f'logit adjustment needs the training class counts of all {num_classes} '
                               'classes, but config.json mislas.class_counts is missing or the wrong length; '
                               're-save the model with them')
    val_ds, val_idx, image_column, label_column = held_out_validation(
        model, dataset, split_train=split_train, image_column=image_column, label_column=label_column, train=train)
    loader = eval_loader(model, val_ds, image_column, label_column, batch_size)
    features, _, val_labels = predict_features(model, loader)
    new, fitted = calibrate_model(model, method, features, val_labels, mislas.get('class_counts'),
                                  bias_mode=bias_mode)
    return new, fitted, val_idx, (features, val_labels)
