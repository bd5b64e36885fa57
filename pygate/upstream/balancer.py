"""Load balancers: which target of a pool serves the next request.

Pure logic, no I/O: a balancer is built once per upstream when the
configuration loads (the smooth weighted round-robin state, the cumulative
weights, the hash ring) and :meth:`Balancer.choose` does only per-request
work. Balancers speak in target indices; ``allowed`` is ``None`` when every
target may be chosen (the common case), else one flag per target (health,
breaker, targets already tried by a retry), with at least one set.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from typing import Protocol


class Node(Protocol):
    """What a balancer reads from a target."""

    @property
    def key(self) -> str:
        """A stable name for the target (its URL): its place on the hash ring."""
        ...

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int:
        """Requests in flight to the target (least-conn)."""
        ...


class Balancer(Protocol):
    def choose(self, key: str, allowed: Sequence[bool] | None) -> int:
        """The index of the target for this request.

        :param key: the request's hash key (only the ``hash`` balancer reads it).
        :param allowed: ``None`` when every target is allowed, else a flag per target,
            at least one of them true.
        """
        ...


class RoundRobin:
    """Smooth weighted round-robin, as nginx does it.

    Each choice adds every allowed target's weight to its running score, takes
    the highest score and subtracts the total weight from it: weights 5, 1, 1
    give ``a a b a c a a`` rather than ``a a a a a b c``, and equal weights give
    a plain rotation.
    """

    __slots__ = ("current", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.current = [0] * len(self.weights)

    def choose(self, key: str, allowed: Sequence[bool] | None) -> int:
        weights = self.weights
        current = self.current
        best = -1
        best_score = 0
        total = 0
        for index, weight in enumerate(weights):
            if allowed is not None and not allowed[index]:
                continue
            score = current[index] + weight
            current[index] = score
            total += weight
            if best < 0 or score > best_score:
                best = index
                best_score = score
        current[best] -= total
        return best


class LeastConn:
    """Fewest requests in flight relative to weight; ties go round-robin (weighted).

    ``active / weight`` is compared without division; among the targets sharing
    the lowest load, smooth weighted round-robin decides, so idle targets share
    sequential traffic by weight as nginx's ``least_conn`` does.
    """

    __slots__ = ("nodes", "tie")

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self.tie = RoundRobin([n.weight for n in self.nodes])

    def choose(self, key: str, allowed: Sequence[bool] | None) -> int:
        nodes = self.nodes
        best = -1
        best_active = 0
        best_weight = 1
        ties = 0
        for index, node in enumerate(nodes):
            if allowed is not None and not allowed[index]:
                continue
            active, weight = node.active, node.weight
            if best < 0 or active * best_weight < best_active * weight:
                best, best_active, best_weight, ties = index, active, weight, 1
            elif active * best_weight == best_active * weight:
                ties += 1
        if ties == 1:
            return best
        tied = [
            (allowed is None or allowed[i]) and n.active * best_weight == best_active * n.weight
            for i, n in enumerate(nodes)
        ]
        return self.tie.choose(key, tied)


class WeightedRandom:
    """A random target, each with probability ``weight / total``."""

    __slots__ = ("cumulative", "random", "total", "weights")

    def __init__(self, weights: Sequence[int], rng: random.Random | None = None) -> None:
        self.weights = list(weights)
        self.cumulative: list[int] = []
        running = 0
        for weight in self.weights:
            running += weight
            self.cumulative.append(running)
        self.total = running
        self.random = (rng or random.Random()).random

    def choose(self, key: str, allowed: Sequence[bool] | None) -> int:
        if allowed is None:
            return bisect.bisect_right(self.cumulative, self.random() * self.total)
        total = sum(w for w, ok in zip(self.weights, allowed, strict=True) if ok)
        point = self.random() * total
        last = -1
        for index, weight in enumerate(self.weights):
            if allowed[index]:
                last = index
                point -= weight
                if point < 0:
                    return index
        return last  # float rounding at the very end of the range


# Points per unit of weight on the ring (as ketama and nginx) and a cap on the ring size.
VIRTUAL_NODES = 160
RING_LIMIT = 65536


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash()``)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


class ConsistentHash:
    """Consistent hashing on a ring of virtual nodes.

    Each target owns ``VIRTUAL_NODES * weight`` points (scaled down together
    when the ring would exceed ``RING_LIMIT``); a key goes to the owner of the
    first point at or after its hash. Adding or removing a target moves only
    the keys of the points it gains or loses, about ``1/N`` of them, and a
    target that is not allowed (down, already tried) hands its keys to the
    next points clockwise while every other key stays where it was.
    """

    __slots__ = ("owners", "points", "size")

    def __init__(self, nodes: Sequence[Node]) -> None:
        weights = [n.weight for n in nodes]
        divisor = math.gcd(*weights)
        units = [w // divisor for w in weights]
        per_unit = max(1, min(VIRTUAL_NODES, RING_LIMIT // sum(units)))
        ring: list[tuple[int, int]] = []
        for index, (node, unit) in enumerate(zip(nodes, units, strict=True)):
            for replica in range(unit * per_unit):
                ring.append((ring_hash(f"{node.key}#{replica}"), index))
        ring.sort()
        self.points = [point for point, _ in ring]
        self.owners = [owner for _, owner in ring]
        self.size = len(ring)

    def choose(self, key: str, allowed: Sequence[bool] | None) -> int:
        position = bisect.bisect_left(self.points, ring_hash(key))
        if position == self.size:
            position = 0
        owners = self.owners
        if allowed is None:
            return owners[position]
        for step in range(self.size):
            owner = owners[(position + step) % self.size]
            if allowed[owner]:
                return owner
        raise ValueError("no allowed target")


def make_balancer(kind: str, nodes: Sequence[Node]) -> Balancer:
    """The balancer named by an upstream's ``balancer`` setting."""
    if kind == "round-robin":
        return RoundRobin([n.weight for n in nodes])
    if kind == "least-conn":
        return LeastConn(nodes)
    if kind == "random":
        return WeightedRandom([n.weight for n in nodes])
    if kind == "hash":
        return ConsistentHash(nodes)
    raise ValueError(f"unknown balancer {kind!r}")
