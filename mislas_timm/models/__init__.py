"""Model families registered with timm on import."""
from .resnet_cifar import CifarResNet, checkpoint_filter_fn
from .resnet_places import ResNetPlaces

__all__ = ['CifarResNet', 'ResNetPlaces', 'checkpoint_filter_fn']
