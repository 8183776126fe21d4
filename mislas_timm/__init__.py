"""mislas-timm: MiSLAS (Zhong et al., CVPR 2021) for timm and the Hugging Face Hub.

Importing this package registers the CIFAR ResNets (``resnet{20,32,44,56,110}_cifar``) and
``resnet152_places`` (ResNet-152 plus the Places-LT reference's extra block) with timm.
"""
from . import models  # noqa: F401  (registers the model families with timm)
from .data.longtail import longtail_counts, longtail_indices, split_sha256
from .data.sampler import ClassAwareSampler
from .evaluation import evaluate
from .heads import LearnableWeightScaling, ScaledLinearHead
from .hub import load_model, push_to_hub, save_hub_folder
from .losses import LabelAwareSmoothing, las_smoothing, mixup_batch, mixup_cross_entropy
from .metrics import calibration_report, ece
from .stage2 import fold_head, shift_bn, to_stage2

__version__ = '0.1.0'

__all__ = [
    'ClassAwareSampler', 'LabelAwareSmoothing', 'LearnableWeightScaling', 'ScaledLinearHead',
    'calibration_report', 'ece', 'evaluate', 'fold_head', 'las_smoothing', 'load_model',
    'longtail_counts', 'longtail_indices', 'mixup_batch', 'mixup_cross_entropy', 'push_to_hub',
    'save_hub_folder', 'shift_bn', 'split_sha256', 'to_stage2',
]
