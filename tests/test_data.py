from collections import Counter

import numpy as np
import pytest

from mislas_timm import ClassAwareSampler, longtail_counts, longtail_indices, split_sha256
from mislas_timm.data.sampler import InstanceSampler, class_aware_sequence


def test_cifar10_lt_counts():
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(longtail_counts(5000, 10, 100)) == 12406
    assert sum(longtail_counts(500, 100, 100)) == 10847
    assert longtail_counts(5000, 10, 1) == [5000] * 10


def test_step_profile():
    assert longtail_counts(500, 6, 10, profile='step') == [500, 500, 500, 50, 50, 50]


@pytest.mark.parametrize('args,match', [
    ((5000, 10, 0.01), 'imb_factor'),
    ((5000, 10, 0.5), 'imb_factor'),
    ((50, 10, 100), '0 images'),
    ((5000, 1, 10), 'num_classes'),
    ((0, 10, 10), 'n_max'),
])
def test_bad_counts(args, match):
    with pytest.raises(ValueError, match=match):
        longtail_counts(*args)


def test_longtail_indices_reproduce_reference_selection():
    labels = np.repeat(np.arange(4), 20)
    np.random.RandomState(3).shuffle(labels)
    counts = [20, 10, 5, 2]
    kept = longtail_indices(labels, counts, data_seed=0)
    # The reference: np.random.seed(0); per class in order, shuffle its indices, keep the first n.
    np.random.seed(0)
    expected = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        expected.extend(idx[:n])
    assert kept.tolist() == [int(i) for i in expected]
    assert Counter(labels[kept].tolist()) == {0: 20, 1: 10, 2: 5, 3: 2}
    assert longtail_indices(labels, counts, data_seed=1).tolist() != kept.tolist()
    assert split_sha256(kept) == split_sha256(sorted(kept)) != split_sha256(kept[:-1])
    with pytest.raises(ValueError, match='class 0 needs 21'):
        longtail_indices(labels, [21, 1, 1, 1])


LABELS = np.array([0] * 50 + [1] * 20 + [2] * 7 + [3] * 3)


def test_class_aware_stream_semantics():
    rng = np.random.RandomState(0)
    stream = class_aware_sequence(LABELS, 400, samples_per_class=4, rng=rng)
    visits = np.array(stream).reshape(-1, 4)
    # every visit draws 4 samples of one class
    assert all(len(set(LABELS[v])) == 1 for v in visits)
    visit_classes = [int(LABELS[v[0]]) for v in visits]
    # classes come in reshuffled cycles: each block of 4 visits covers all 4 classes once
    for i in range(0, len(visit_classes), 4):
        assert sorted(visit_classes[i:i + 4]) == [0, 1, 2, 3]
    assert visit_classes[:4] != visit_classes[4:8] or visit_classes[4:8] != visit_classes[8:12]
    # each class cycles through its own samples before repeating one
    tail = [i for i in stream if LABELS[i] == 3]
    for i in range(0, len(tail) - 2, 3):
        assert sorted(tail[i:i + 3]) == [77, 78, 79]
    counts = Counter(LABELS[stream].tolist())
    assert max(counts.values()) - min(counts.values()) <= 4


def test_sampler_nominal_length_and_epochs():
    sampler = ClassAwareSampler(LABELS, samples_per_class=4, seed=0)
    assert len(sampler) == 50 * 4
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize('replicas', [2, 3])
def test_sampler_shards_disjoint_equal_balanced(replicas):
    single = ClassAwareSampler(LABELS, samples_per_class=4, seed=5, num_replicas=1)
    shards = [ClassAwareSampler(LABELS, samples_per_class=4, seed=5, num_replicas=replicas, rank=r) for r in range(replicas)]
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) == len(shards[0])
    # rank r gets the r-th contiguous share of the global stream: disjoint positions, union = global stream
    assert sum(lists, []) == shards[0].global_stream()
    assert all(len(set(LABELS[v])) == 1 for share in lists for v in np.array(share).reshape(-1, 4))
    # the global stream is what one process sees (up to the padding to whole visits per rank)
    assert shards[0].global_stream()[:len(single)] == list(single)[:len(single)]
    for share in lists:
        counts = Counter(LABELS[share].tolist())
        assert len(counts) == 4 and max(counts.values()) / min(counts.values()) < 1.5


def test_instance_sampler_shards():
    shards = [list(InstanceSampler(10, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(sum(shards, [])) == set(range(10))
    assert list(InstanceSampler(10, seed=1)) == sorted(list(InstanceSampler(10, seed=1)), key=list(InstanceSampler(10, seed=1)).index)


def test_sampler_bad_input():
    with pytest.raises(ValueError, match='non-empty'):
        ClassAwareSampler([])
    with pytest.raises(ValueError, match='rank'):
        ClassAwareSampler(LABELS, num_replicas=2, rank=2)
