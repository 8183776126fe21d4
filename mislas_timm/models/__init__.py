"""Model families registered with timm on import."""
from .resnet_cifar import CifarResNet, checkpoint_filter_fn

__all__ = ['CifarResNet', 'checkpoint_filter_fn']
