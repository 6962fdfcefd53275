"""The clients' minibatches, drawn from a counter-based random stream (SplitMix64).

Every random number a client uses is a pure function of (seed, round, client, local step, k):

    base       = seed_for(seed, "batches", round)                    (one per run and round)
    client     = mix(base + (c + 1)·γ)                               (client c's stream)
    bits(s, k) = mix(client + (s·2³² + k)·γ)                         (the k-th number of step s)
    draw k     = ⌊u·n⌋,  u = the top 32 of bits(s, k) / 2³²           (k < 2³¹)

with γ = 0x9E3779B97F4A7C15 and ``mix`` SplitMix64's finaliser, all modulo 2⁶⁴. A client holding
n items fills a minibatch of b in local step s as follows:

* n < b: the first b draws (with replacement);
* n ≥ 2b: the first b distinct items among the draws 0, 1, 2, … (without replacement: the rule
  only compares items for equality, so the batch is a uniform b-subset);
* b ≤ n < 2b: the b items i with the smallest bits(s, 2³¹ + i) (without replacement, with no
  long wait for the last distinct draws).

Client c's batches therefore depend on nothing but (seed, round, c, s, n, b): not on which other
clients were sampled, on the local-training strategy, or on how many replicas run together, and
every sampled client of every replica is drawn in one batched computation whose cost grows with
the batch size, not with the clients' dataset sizes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment (the golden ratio in 64-bit fixed point)."""
MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""SplitMix64's two finaliser multipliers."""
ITEM_KEYS = 1 << 31
"""Counters from here on key items (b ≤ n < 2b); draws count below."""


def _int64(u: int) -> int:
    """The int64 with the same 64 bits as the unsigned integer ``u`` mod 2⁶⁴."""
    u &= (1 << 64) - 1
    return u - (1 << 64) if u >> 63 else u


def splitmix64(z: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 bit patterns, elementwise (products wrap mod 2⁶⁴)."""
    return _mix_(z.clone())


def _mix_(z: Tensor) -> Tensor:
    """:func:`splitmix64` in place (one scratch buffer: fresh large tensors cost page faults)."""
    t = torch.empty_like(z)
    for shift, mult in ((30, MIX[0]), (27, MIX[1]), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)  # arithmetic shift; the mask makes it logical
        t &= (1 << (64 - shift)) - 1
        z ^= t
        if mult is not None:
            z *= _int64(mult)
    return z


def client_keys(bases: Tensor, clients: Tensor) -> Tensor:
    """(...,) stream keys of ``clients`` in runs whose round bases are ``bases`` (broadcast)."""
    return splitmix64(bases + (clients + 1) * _int64(GAMMA))


def stream_bits(keys: Tensor, steps: Tensor, k: Tensor) -> Tensor:
    """int64 bits(s, k) of the streams ``keys`` (module docstring), all broadcast."""
    z = torch.empty(torch.broadcast_shapes(keys.shape, steps.shape, k.shape), dtype=torch.long)
    torch.add(steps << 32, k, out=z)  # the counter
    z *= _int64(GAMMA)
    z += keys
    return _mix_(z)


def below(bits: Tensor, n: Tensor) -> Tensor:
    """⌊u·n⌋ for u = the top 32 of ``bits`` / 2³² (n < 2³¹; bias ≤ n / 2³²)."""
    return (((bits >> 32) & 0xFFFFFFFF) * n) >> 32


def draw_positions(keys: Tensor, sizes: Tensor, steps: int, batch_size: int) -> Tensor:
    """(n, steps, batch_size) positions into each client's item list (module docstring)."""
    if bool((sizes <= 0).any()):
        raise ValueError("cannot draw a minibatch from an empty local dataset")
    if bool((sizes >= ITEM_KEYS).any()):
        raise ValueError(f"a local dataset may hold at most {ITEM_KEYS - 1} items")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    keys = keys.repeat_interleave(steps).unsqueeze(1)  # one row per (client, step)
    step = torch.arange(steps).repeat(len(sizes)).unsqueeze(1)
    size = sizes.repeat_interleave(steps).unsqueeze(1)
    pos = torch.empty(len(size), batch_size, dtype=torch.long)
    few = (size < batch_size).squeeze(1)
    many = (size >= 2 * batch_size).squeeze(1)
    regimes = ((few, _first_draws), (many, _first_distinct), (~few & ~many, _smallest_keys))
    for rows, fill in regimes:
        if bool(rows.all()):
            pos = fill(keys, step, size, batch_size)
        elif bool(rows.any()):
            at = rows.nonzero().squeeze(1)
            pos[at] = fill(keys[at], step[at], size[at], batch_size)
    return pos.view(len(sizes), steps, batch_size)


def _first_draws(keys: Tensor, step: Tensor, size: Tensor, b: int) -> Tensor:
    """(rows, b) the first b draws (with replacement)."""
    return below(stream_bits(keys, step, torch.arange(b)), size)


def _smallest_keys(keys: Tensor, step: Tensor, size: Tensor, b: int) -> Tensor:
    """(rows, b) the b items with the smallest keys bits(s, 2³¹ + i), ascending."""
    items = torch.arange(int(size.max()))
    ranks = stream_bits(keys, step, ITEM_KEYS + items) >> 1
    ranks = torch.where(items < size, ranks & (2 ** 62 - 1), 2 ** 62)  # absent items rank last
    return torch.topk(ranks, b, dim=1, largest=False).indices


def _first_distinct(keys: Tensor, step: Tensor, size: Tensor, b: int) -> Tensor:
    """(rows, b) the first b distinct items among each row's draws, in order of appearance.

    The draws are examined in chunks (each long enough to finish most rows); which draws a
    chunk holds does not change the result, only how many chunks it takes.
    """
    rows, width = len(size), int(size.max())
    first = torch.full((rows * width,), ITEM_KEYS - 1, dtype=torch.int32)  # (row, item) → first k
    out = torch.empty(rows * b + 1, dtype=torch.long)  # + a slot for the draws not kept
    have = torch.zeros(rows, dtype=torch.long)
    live, start = torch.arange(rows), 0
    while len(live):
        if start >= ITEM_KEYS // 2:  # never reached in practice: each draw is new w.p. ≥ ½
            raise RuntimeError("the minibatch stream ran out of draws")
        n, need = size[live, 0].double(), (b - have[live]).double()
        left = n - have[live].double()  # expected draws for ``need`` new items, plus a margin
        chunk = int(math.ceil(float((n * torch.log(left / (left - need))).max()) * 1.1)) + 8
        k = start + torch.arange(chunk)
        item = below(stream_bits(keys[live], step[live], k), size[live])
        cell = (live * width).unsqueeze(1) + item
        first.scatter_reduce_(0, cell.flatten(), k.int().expand_as(cell).flatten(), "amin")
        new = first.take(cell) == k.int()
        slot = have[live].unsqueeze(1) + new.cumsum(1) - 1
        keep = new & (slot < b)
        out.scatter_(0, torch.where(keep, (live * b).unsqueeze(1) + slot, rows * b).flatten(),
                     item.flatten())
        have[live] += keep.sum(1)
        live, start = live[have[live] < b], start + chunk
    return out[:-1].view(rows, b)


def uniform_subsets(bases: Tensor, n: int, k: int) -> Tensor:
    """(B, k) sorted k-subsets of range(n), uniformly without replacement, one per stream base
    (the module docstring's sampler, with the stream key mix(base))."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot draw {k} of {n} without replacement")
    pos = draw_positions(splitmix64(bases), torch.full_like(bases, n), 1, k)
    return pos.view(len(bases), k).sort(dim=1).values


class ClientTable:
    """Clients' index sets as one padded (C, m) table and their sizes (C,)."""

    def __init__(self, clients: Sequence[Tensor]):
        if not len(clients):
            raise ValueError("a client table needs at least one client")
        self.sizes = torch.tensor([len(c) for c in clients], dtype=torch.long)
        table = pad_sequence([c.cpu().long() for c in clients], batch_first=True)
        if table.numel() == 0:
            table = torch.zeros(len(clients), 1, dtype=torch.long)
        self.table = table.int() if int(table.max()) < 2 ** 31 else table

    def batches(self, rows: Tensor, clients: Tensor, bases: Tensor, steps: int,
                batch_size: int) -> Tensor:
        """(n, steps, batch_size) long indices: the minibatches of the clients at table ``rows``,
        numbered ``clients`` in runs whose round bases are ``bases`` (all (n,))."""
        pos = draw_positions(client_keys(bases, clients), self.sizes[rows], steps, batch_size)
        at = (rows * self.table.shape[1]).view(-1, 1, 1) + pos
        return self.table.view(-1).take(at).long()
