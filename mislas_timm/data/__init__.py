"""Long-tail views, samplers and Hugging Face data set adapters."""
from .longtail import class_counts, longtail_counts, longtail_indices, longtail_view, split_sha256, validation_split
from .label_shift import shifted_test_counts, shifted_test_indices
from .sampler import ClassAwareSampler, InstanceSampler, class_aware_sequence

__all__ = ['ClassAwareSampler', 'InstanceSampler', 'class_aware_sequence', 'class_counts',
           'longtail_counts', 'longtail_indices', 'split_sha256', 'validation_split', 'shifted_test_counts', 'shifted_test_indices',
           'longtail_view']
