"""mislas-timm: MiSLAS (Zhong et al., CVPR 2021) for timm and the Hugging Face Hub.

Importing this package registers the CIFAR ResNets (``resnet{20,32,44,56,110}_cifar``) and
``resnet152_places`` (ResNet-152 plus the Places-LT reference's extra block) with timm.
"""
from . import models  # noqa: F401  (registers the model families with timm)
from .data.longtail import longtail_counts, longtail_indices, split_sha256
from .data.sampler import ClassAwareSampler
from .evaluation import evaluate, evaluate_shifts
from .heads import LearnableWeightScaling, ScaledLinearHead
from .hub import load_model, push_to_hub, save_hub_folder
from .losses import (BalancedSoftmaxCrossEntropy, LabelAwareSmoothing, balanced_softmax_logits, las_smoothing, mixup_batch,
                     mixup_cross_entropy)
from .calibration import (calibrate_model, fit_logit_adjustment, fit_tau_norm, fit_temperature, fold_logit_adjustment,
                          fold_tau_norm, fold_temperature)
from .metrics import adaptive_ece, calibration_report, classwise_ece, ece
from .stage2 import fold_head, shift_bn, to_stage2

__version__ = '0.1.0'

__all__ = [
    'adaptive_ece', 'classwise_ece', 'evaluate_shifts',
    'BalancedSoftmaxCrossEntropy', 'balanced_softmax_logits', 'calibrate_model', 'fit_logit_adjustment',
    'fit_tau_norm', 'fit_temperature', 'fold_logit_adjustment', 'fold_tau_norm', 'fold_temperature',
    'ClassAwareSampler', 'LabelAwareSmoothing', 'LearnableWeightScaling', 'ScaledLinearHead',
    'calibration_report', 'ece', 'evaluate', 'fold_head', 'las_smoothing', 'load_model',
    'longtail_counts', 'longtail_indices', 'mixup_batch', 'mixup_cross_entropy', 'push_to_hub',
    'save_hub_folder', 'shift_bn', 'split_sha256', 'to_stage2',
]
