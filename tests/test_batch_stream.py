"""The counter-based minibatch stream: SplitMix64 bit for bit, the three sampling regimes
against a plain-Python walk of the stream, uniformity, and independence of the batch
composition."""

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from fedlib import batch_stream as bs
from fedlib.batch_stream import ClientTable, draw_positions, splitmix64, uniform_subsets

M64 = (1 << 64) - 1


def py_mix(z: int) -> int:
    """SplitMix64's finaliser on unsigned 64-bit integers (the published reference)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def py_draw(key: int, step: int, k: int, n: int) -> int:
    bits = py_mix((key & M64) + ((step << 32) + k) * bs.GAMMA)
    return ((bits >> 32) * n) >> 32


def py_batch(key: int, step: int, n: int, b: int) -> list[int]:
    """The module docstring's rule, walked one number at a time."""
    if n < b:
        return [py_draw(key, step, k, n) for k in range(b)]
    if n >= 2 * b:
        out, k = [], 0
        while len(out) < b:
            item = py_draw(key, step, k, n)
            if item not in out:
                out.append(item)
            k += 1
        return out
    ranks = [py_mix((key & M64) + ((step << 32) + bs.ITEM_KEYS + i) * bs.GAMMA) >> 1
             for i in range(n)]
    return sorted(range(n), key=lambda i: ranks[i] & (2 ** 62 - 1))[:b]


def test_splitmix64_matches_the_reference_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randint(-2 ** 63, 2 ** 63 - 1, (200,), generator=g),
                   torch.tensor([0, 1, -1, 2 ** 63 - 1, -2 ** 63])])
    got = splitmix64(z)
    for a, b in zip(z.tolist(), got.tolist()):
        assert b & M64 == py_mix(a)
    assert torch.equal(z, torch.cat([torch.randint(-2 ** 63, 2 ** 63 - 1, (200,),
                                     generator=torch.Generator().manual_seed(0)),
                                     torch.tensor([0, 1, -1, 2 ** 63 - 1, -2 ** 63])]))


@pytest.mark.parametrize("n,b", [(3, 8), (40, 8), (500, 128), (12, 8), (8, 8), (15, 8), (16, 8)])
def test_every_regime_equals_a_walk_of_the_stream(n, b):
    keys = splitmix64(torch.arange(5) * 7919 - 3)
    steps = 3
    pos = draw_positions(keys, torch.full((5,), n), steps, b)
    assert pos.shape == (5, steps, b)
    for row, key in enumerate(keys.tolist()):
        for s in range(steps):
            assert pos[row, s].tolist() == py_batch(key, s, n, b)


def test_without_replacement_when_the_client_holds_enough():
    keys = splitmix64(torch.arange(300))
    sizes = torch.randint(1, 60, (300,), generator=torch.Generator().manual_seed(1))
    pos = draw_positions(keys, sizes, 2, 16)
    for row, n in enumerate(sizes.tolist()):
        for s in range(2):
            items = pos[row, s].tolist()
            assert all(0 <= i < n for i in items)
            if n >= 16:
                assert len(set(items)) == 16


@pytest.mark.parametrize("n,b", [(6, 2), (5, 3), (5, 4), (7, 3), (9, 4)])
def test_batches_are_uniform_subsets(n, b):
    rows = 400 * len(list(itertools.combinations(range(n), b)))
    pos = draw_positions(splitmix64(torch.arange(rows)), torch.full((rows,), n), 1, b)
    counts = Counter(tuple(sorted(p)) for p in pos[:, 0].tolist())
    assert set(counts) == set(itertools.combinations(range(n), b))
    assert chisquare(list(counts.values())).pvalue > 1e-3


def test_draws_with_replacement_are_uniform():
    pos = draw_positions(splitmix64(torch.arange(3000)), torch.full((3000,), 5), 1, 8)
    counts = torch.bincount(pos.flatten(), minlength=5)
    assert chisquare(counts.tolist()).pvalue > 1e-3


def test_a_clients_batch_does_not_depend_on_the_other_rows():
    """The chunk widths of the distinct-draw walk follow the call's largest client: the result
    must not."""
    keys = splitmix64(torch.tensor([11, 12, 13]))
    alone = draw_positions(keys[:1], torch.tensor([40]), 2, 8)
    mixed = draw_positions(keys, torch.tensor([40, 10_000, 3]), 2, 8)
    assert torch.equal(alone[0], mixed[0])


def test_uniform_subsets_are_sorted_distinct_and_checked():
    out = uniform_subsets(torch.arange(50), 100, 10)
    assert out.shape == (50, 10)
    assert bool((out[:, 1:] > out[:, :-1]).all()) and int(out.max()) < 100
    assert torch.equal(uniform_subsets(torch.arange(3), 4, 4), torch.arange(4).expand(3, 4))
    with pytest.raises(ValueError, match="cannot draw 5 of 4"):
        uniform_subsets(torch.arange(3), 4, 5)


def test_client_table_maps_positions_to_each_clients_items():
    clients = [torch.tensor([5, 9, 2]), torch.tensor([7]), torch.arange(100, 140)]
    table = ClientTable(clients)
    rows = torch.tensor([2, 0, 1])
    batches = table.batches(rows, rows, torch.zeros(3, dtype=torch.long), 2, 4)
    for r, out in zip(rows.tolist(), batches):
        assert set(out.flatten().tolist()) <= set(clients[r].tolist())
    assert len(set(batches[0, 0].tolist())) == 4


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="empty local dataset"):
        draw_positions(torch.arange(2), torch.tensor([3, 0]), 1, 2)
    with pytest.raises(ValueError, match="batch_size"):
        draw_positions(torch.arange(2), torch.tensor([3, 4]), 1, 0)
    with pytest.raises(ValueError, match="at least one client"):
        ClientTable([])


def test_a_replicas_client_sample_equals_the_batched_draw():
    from fedlib.protocols import SyncRounds, draw_clients
    proto = SyncRounds(clients_per_round=7)
    batch = draw_clients([3, 4, 5], [0, 9, 2], 40, 7)
    for row, (s, t) in enumerate([(3, 0), (4, 9), (5, 2)]):
        assert torch.equal(proto.draw(s, t, 40), batch[row])
