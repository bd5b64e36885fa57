"""Balancers (pygate/upstream/balancer.py): pure choices, no I/O."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from pygate.upstream.balancer import (
    ConsistentHash,
    LeastConn,
    RoundRobin,
    WeightedRandom,
    make_balancer,
)


@dataclass
class Node:
    key: str
    weight: int = 1
    active: int = 0


def nodes(count: int, *weights: int) -> list[Node]:
    return [Node(f"http://10.0.0.{i + 1}:8000", weights[i] if weights else 1)
            for i in range(count)]


# ---------------------------------------------------------------------------
# Round-robin
# ---------------------------------------------------------------------------


def test_smooth_weighted_round_robin_interleaves_as_nginx_does() -> None:
    balancer = RoundRobin([5, 1, 1])
    picks = "".join("abc"[balancer.choose("", None)] for _ in range(14))
    assert picks == "aabacaa" * 2


def test_equal_weights_rotate() -> None:
    balancer = RoundRobin([1, 1, 1])
    assert [balancer.choose("", None) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_each_cycle_gives_every_target_exactly_its_weight(weights: list[int]) -> None:
    balancer = RoundRobin(weights)
    for _ in range(2):
        counts = Counter(balancer.choose("", None) for _ in range(sum(weights)))
        assert [counts[i] for i in range(len(weights))] == weights


def test_round_robin_skips_targets_that_are_not_allowed() -> None:
    balancer = RoundRobin([1, 2, 1])
    allowed = [True, False, True]
    picks = [balancer.choose("", allowed) for _ in range(6)]
    assert sorted(Counter(picks).items()) == [(0, 3), (2, 3)]
    # Back to all allowed: the weights hold again over a cycle.
    counts = Counter(balancer.choose("", None) for _ in range(400))
    assert abs(counts[1] - 200) <= 2 and abs(counts[0] - 100) <= 2


# ---------------------------------------------------------------------------
# Least connections
# ---------------------------------------------------------------------------


def test_least_conn_prefers_the_target_with_fewest_requests_in_flight() -> None:
    pool = nodes(3)
    balancer = LeastConn(pool)
    pool[0].active, pool[1].active, pool[2].active = 4, 1, 3
    assert balancer.choose("", None) == 1
    assert balancer.choose("", [True, False, True]) == 2


def test_least_conn_weighs_load_against_weight() -> None:
    pool = nodes(2, 1, 3)
    balancer = LeastConn(pool)
    pool[0].active, pool[1].active = 1, 2  # 1/1 against 2/3: the heavier target wins
    assert balancer.choose("", None) == 1
    pool[1].active = 3  # 1/1 against 3/3: a tie, weighted round-robin among the tied
    assert {balancer.choose("", None) for _ in range(4)} == {0, 1}


def test_least_conn_spreads_sequential_traffic_by_weight() -> None:
    balancer = LeastConn(nodes(3, 1, 2, 1))
    counts = Counter(balancer.choose("", None) for _ in range(400))
    assert [counts[i] for i in range(3)] == [100, 200, 100]


# ---------------------------------------------------------------------------
# Random
# ---------------------------------------------------------------------------


def test_random_follows_the_weights() -> None:
    balancer = WeightedRandom([1, 2, 7], random.Random(7))
    counts = Counter(balancer.choose("", None) for _ in range(20_000))
    for index, share in enumerate((0.1, 0.2, 0.7)):
        assert abs(counts[index] / 20_000 - share) < 0.02


def test_random_never_picks_a_target_that_is_not_allowed() -> None:
    balancer = WeightedRandom([1, 2, 7], random.Random(3))
    counts = Counter(balancer.choose("", [True, True, False]) for _ in range(3000))
    assert set(counts) == {0, 1}
    assert 0.28 < counts[0] / 3000 < 0.39


# ---------------------------------------------------------------------------
# Consistent hashing
# ---------------------------------------------------------------------------

KEYS = [f"client-{i}" for i in range(10_000)]


def assignment(balancer: ConsistentHash, pool: list[Node],
               allowed: list[bool] | None = None) -> dict[str, str]:
    return {key: pool[balancer.choose(key, allowed)].key for key in KEYS}


def test_hash_is_sticky_and_balanced() -> None:
    pool = nodes(4)
    first = assignment(ConsistentHash(pool), pool)
    assert assignment(ConsistentHash(pool), pool) == first  # stable across instances
    counts = Counter(first.values())
    assert len(counts) == 4
    assert all(1750 <= count <= 3250 for count in counts.values()), counts


def test_adding_a_target_moves_about_one_nth_of_the_keys_all_to_it() -> None:
    pool = nodes(5)
    before = assignment(ConsistentHash(pool[:4]), pool[:4])
    after = assignment(ConsistentHash(pool), pool)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert 0.13 < len(moved) / len(KEYS) < 0.27, len(moved)  # about 1/5
    assert {after[key] for key in moved} == {pool[4].key}


def test_removing_a_target_moves_only_its_own_keys() -> None:
    pool = nodes(5)
    before = assignment(ConsistentHash(pool), pool)
    rest = pool[:2] + pool[3:]
    after = assignment(ConsistentHash(rest), rest)
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == pool[2].key}
    assert 0.13 < len(moved) / len(KEYS) < 0.27


def test_a_target_that_is_down_hands_over_only_its_own_keys() -> None:
    pool = nodes(4)
    balancer = ConsistentHash(pool)
    before = assignment(balancer, pool)
    during = assignment(balancer, pool, [True, False, True, True])
    for key in KEYS:
        if before[key] != pool[1].key:
            assert during[key] == before[key]
        else:
            assert during[key] != pool[1].key
    # The orphaned keys spread over the others rather than landing on one of them.
    heirs = Counter(during[key] for key in KEYS if before[key] == pool[1].key)
    assert len(heirs) == 3


def test_hash_honours_weights() -> None:
    pool = nodes(2, 1, 3)
    counts = Counter(assignment(ConsistentHash(pool), pool).values())
    assert 0.68 < counts[pool[1].key] / len(KEYS) < 0.82


def test_make_balancer_knows_every_configured_name() -> None:
    pool = nodes(2)
    assert isinstance(make_balancer("round-robin", pool), RoundRobin)
    assert isinstance(make_balancer("least-conn", pool), LeastConn)
    assert isinstance(make_balancer("random", pool), WeightedRandom)
    assert isinstance(make_balancer("hash", pool), ConsistentHash)
