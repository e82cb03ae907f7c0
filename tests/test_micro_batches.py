"""pipeline.infer's micro-batches (length-sorted, under a token budget, padding bounded) and forward passes."""

import numpy as np

from pipeline.infer import PADDING, micro_batches, passes


def test_micro_batches_respect_the_token_budget():
    lengths = np.array([5, 30, 12, 30, 7, 100, 1])
    order, groups = micro_batches(lengths, batch_tokens=60)
    assert sorted(order[np.concatenate(groups)].tolist()) == list(range(len(lengths)))
    for group in groups:
        members = order[group]
        assert len(members) == 1 or len(members) * lengths[members].max() <= 60
    assert lengths[order].tolist() == sorted(lengths.tolist(), reverse=True)


def test_passes_join_consecutive_micro_batches_within_the_budget():
    lengths = np.array([50, 48, 30, 29, 10, 9, 9, 100])
    batches = [np.array([7]), np.array([0, 1]), np.array([2, 3]), np.array([4, 5, 6])]   # 100, 100, 60, 30 tokens
    joined = passes(batches, lengths, batch_tokens=120)
    assert [[b.tolist() for b in p] for p in joined] == [[[7]], [[0, 1]], [[2, 3], [4, 5, 6]]]
    assert [[b.tolist() for b in p] for p in passes(batches, lengths, batch_tokens=50)] == [[[7]], [[0, 1]], [[2, 3]],
                                                                                             [[4, 5, 6]]]
    assert passes([], lengths, 100) == []


def test_micro_batches_bound_the_padding_of_each_window():
    lengths = np.array([400, 390, 310, 290, 40, 30, 25, 20, 5])
    order, groups = micro_batches(lengths, batch_tokens=100_000)
    assert [lengths[order[g]].tolist() for g in groups] == [[400, 390, 310], [290], [40, 30, 25], [20, 5]]
    order, groups = micro_batches(lengths, batch_tokens=100_000, padding=PADDING["cpu"])   # tighter on CPU
    assert [lengths[order[g]].tolist() for g in groups] == [[400, 390], [310], [290], [40], [30], [25], [20], [5]]
