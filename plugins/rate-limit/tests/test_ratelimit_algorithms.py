"""Pure unit tests of the algorithms and the memory store, with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pygate_rate_limit.algorithms import (
    FIXED_WINDOW,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    Limit,
    Outcome,
    decide,
    evaluate,
    fixed_window,
    sliding_window,
    token_bucket,
)
from pygate_rate_limit.backends import MemoryStore, key_part, limit_keys

S = 1_000_000  # microseconds per second
T0 = 1_700_000_040 * S  # a multiple of 60 s: the start of a minute window


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * S)


def run(store: MemoryStore, algorithm: str, *limits: Limit, key: str = "k") -> Outcome:
    keys = limit_keys("t", key, algorithm, limits)
    outcomes = store.check_now(keys, algorithm, limits)
    return decide_one(outcomes)


def decide_one(outcomes: list[Outcome]) -> Outcome:
    return outcomes[0] if len(outcomes) == 1 else min(outcomes, key=lambda o: o.allowed)


def admitted(store: MemoryStore, algorithm: str, count: int, *limits: Limit) -> int:
    keys = limit_keys("t", "k", algorithm, limits)
    return sum(decide(store.check_now(keys, algorithm, limits)).allowed for _ in range(count))


def test_fixed_window_counts_and_resets_at_the_window_end():
    clock = Clock(T0 + 15_200_000)  # 15.2 s into the minute
    store = MemoryStore(clock)
    minute = Limit(3, 60_000)
    seen = [run(store, FIXED_WINDOW, minute) for _ in range(4)]
    assert [o.allowed for o in seen] == [True, True, True, False]
    assert [o.remaining for o in seen] == [2, 1, 0, 0]
    assert seen[0].reset_ms == 44_800 and seen[0].retry_ms == 0
    assert seen[3].retry_ms == 44_800
    clock.advance(44.8)  # the next window
    assert run(store, FIXED_WINDOW, minute).remaining == 2


def test_fixed_window_state_is_per_window():
    step = fixed_window((T0 // 1000 - 60_000, 3), T0, Limit(3, 60_000))
    assert step.outcome.allowed and step.state == (T0 // 1000, 1)
    assert step.ttl_ms == 60_000


def test_sliding_window_weights_the_previous_window():
    clock = Clock()
    store = MemoryStore(clock)
    limit = Limit(10, 60_000)
    assert admitted(store, SLIDING_WINDOW, 12, limit) == 10
    clock.advance(60 + 30)  # half-way into the next window: 10 * 0.5 still count
    assert admitted(store, SLIDING_WINDOW, 12, limit) == 5
    clock.advance(15)  # three quarters: the previous 10 weigh 2.5, the current 5 fully
    assert admitted(store, SLIDING_WINDOW, 12, limit) == 2
    clock.advance(60)  # 45 s into the next: the previous 7 weigh 1.75 -> 8 more fit
    assert admitted(store, SLIDING_WINDOW, 12, limit) == 8


def test_sliding_window_retry_is_when_the_weight_has_decayed():
    limit = Limit(10, 60_000)
    start_ms = T0 // 1000
    # previous window held 10; 30 s into this one: 5 used, 4 current -> 9 + 1 = 10 allowed
    step = sliding_window((start_ms, 4, 10), T0 + 30 * S, limit)
    assert step.outcome.allowed and step.outcome.remaining == 0
    assert step.outcome.reset_ms == 30_000  # the window's end: the previous 10 stop counting
    # one more: previous must weigh <= 4 -> 24 s before the window end, i.e. 6 s from now
    step = sliding_window((start_ms, 5, 10), T0 + 30 * S, limit)
    assert not step.outcome.allowed
    assert step.outcome.retry_ms == 6_000
    admitted_then = sliding_window((start_ms, 5, 10), T0 + 36 * S, limit)
    assert admitted_then.outcome.allowed
    assert not sliding_window((start_ms, 5, 10), T0 + 36 * S - 1000, limit).outcome.allowed


def test_sliding_window_full_current_window_waits_past_the_roll_over():
    limit = Limit(4, 1000)
    start_ms = T0 // 1000
    step = sliding_window((start_ms, 4, 0), T0 + 600_000, limit)  # 0.6 s in
    # at the roll-over 4 weigh fully; one slot frees after a quarter of the next window
    assert step.outcome.retry_ms == 400 + 250
    later = T0 + (1000 + 250) * 1000
    assert sliding_window((start_ms, 4, 0), later, limit).outcome.allowed
    assert not sliding_window((start_ms, 4, 0), later - 1000, limit).outcome.allowed


def test_token_bucket_allows_a_burst_then_refills_gradually():
    clock = Clock()
    store = MemoryStore(clock)
    limit = Limit(4, 1000)  # a token every 250 ms, burst of 4
    assert admitted(store, TOKEN_BUCKET, 6, limit) == 4
    refused = run(store, TOKEN_BUCKET, limit)
    assert not refused.allowed and refused.retry_ms == 250
    clock.advance(0.1)
    assert admitted(store, TOKEN_BUCKET, 3, limit) == 0
    clock.advance(0.15)
    assert admitted(store, TOKEN_BUCKET, 3, limit) == 1
    clock.advance(0.5)
    assert admitted(store, TOKEN_BUCKET, 3, limit) == 2
    clock.advance(10)
    first = run(store, TOKEN_BUCKET, limit)
    assert first.allowed and first.remaining == 3 and first.reset_ms == 250


def test_token_bucket_state_is_the_theoretical_arrival_time():
    limit = Limit(3, 1000)  # 333_333 us per token: integers, no drift
    tat = None
    for _ in range(3):
        step = token_bucket(tat, T0, limit)
        assert step.outcome.allowed
        tat = step.state
    assert tat == (T0 + 3 * 333_333,)
    assert not token_bucket(tat, T0, limit).outcome.allowed


@pytest.mark.parametrize("algorithm", [FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET])
@pytest.mark.parametrize("limit", [1, 3, 7, 100, 997])
def test_exactly_limit_pass_at_one_instant(algorithm, limit):
    store = MemoryStore(Clock(T0 + 123_456))
    assert admitted(store, algorithm, limit * 2 + 5, Limit(limit, 3_600_000)) == limit


@pytest.mark.parametrize("algorithm", [FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET])
def test_a_refused_request_consumes_from_no_limit(algorithm):
    clock = Clock()
    store = MemoryStore(clock)
    second, minute = Limit(2, 1000), Limit(5, 60_000)
    assert admitted(store, algorithm, 10, second, minute) == 2
    for expected in (2, 1, 0):  # 8 refused each round, and still exactly 5 in the minute
        clock.advance(1.01 if algorithm != SLIDING_WINDOW else 2.0)
        assert admitted(store, algorithm, 10, second, minute) == expected
    # 5 admitted in all: the minute limit refuses now, whatever the second allows
    clock.advance(2.0)
    assert admitted(store, algorithm, 10, second, minute) == 0


def test_evaluate_reports_every_limit_and_refuses_if_one_does():
    states = [None, (T0 // 1000, 5)]
    steps, allowed = evaluate(FIXED_WINDOW, states, T0, [Limit(10, 1000), Limit(5, 60_000)])
    assert not allowed
    assert [s.outcome.allowed for s in steps] == [True, False]


def test_decide_picks_the_tightest_limit_and_the_latest_retry():
    fine = Outcome(True, 10, 9, 900, 0)
    close = Outcome(True, 1000, 3, 3_599_000, 0)
    assert decide([fine, close]) == decide([close, fine])
    assert decide([fine, close]).limit == 1000 and decide([fine, close]).remaining == 3
    assert decide([fine, close]).reset == 3599
    short = Outcome(False, 10, 0, 200, 200)
    long = Outcome(False, 1000, 0, 1_800_001, 1_800_001)
    refused = decide([short, long, fine])
    assert not refused.allowed
    assert (refused.limit, refused.remaining, refused.retry_after, refused.reset) == (
        1000, 0, 1801, 1801)
    assert decide([short]).retry_after == 1  # never 0 on a refusal


def test_memory_store_forgets_expired_entries():
    clock = Clock()
    store = MemoryStore(clock)
    for index in range(10):
        store.check_now(limit_keys("t", f"c{index}", FIXED_WINDOW, [Limit(1, 1000)]),
                        FIXED_WINDOW, [Limit(1, 1000)])
    assert len(store.entries) == 10
    clock.advance(1.0)
    store.check_now(limit_keys("t", "new", FIXED_WINDOW, [Limit(1, 1000)]),
                    FIXED_WINDOW, [Limit(1, 1000)])
    assert list(store.entries) == [limit_keys("t", "new", FIXED_WINDOW, [Limit(1, 1000)])[0]]


def test_keys_share_one_hash_tag_and_stay_plain():
    keys = limit_keys("pygate:rl", "r=users|ip=10.0.0.1", SLIDING_WINDOW,
                      [Limit(10, 1000), Limit(1000, 3_600_000)])
    assert keys == ["pygate:rl:{r=users|ip=10.0.0.1}:sw:1000:10",
                    "pygate:rl:{r=users|ip=10.0.0.1}:sw:3600000:1000"]
    assert key_part("ip=2001:db8::1") == "ip=2001:db8::1"
    odd = key_part("c=}{ evil\n")
    assert odd.startswith("#") and "{" not in odd and "}" not in odd
    assert key_part("x" * 500) != key_part("x" * 501)
    assert key_part("ip=10.0.0.1\n").startswith("#")


# ---------------------------------------------------------------------------
# RateLimit-Reset and Retry-After stay within [0, window]
# ---------------------------------------------------------------------------

HOUR = Limit(5, 3_600_000)
HOUR_START = 1_700_002_800 * S  # a multiple of 3600 s: the start of an hour window


def test_sliding_window_reset_after_one_request_is_the_window_end():
    """The reported case: 476 s into the hour the header said 6,724 (2 h - 476 s)."""
    step = sliding_window(None, HOUR_START + 476 * S, HOUR)
    assert step.outcome.allowed and step.outcome.remaining == 4
    assert step.outcome.reset_ms == 3_124_000
    assert decide([step.outcome]).reset == 3124
    assert step.ttl_ms == 6_724_000  # the state itself lives until the next window ends


@given(offset_us=st.integers(0, 3_600 * S - 1))
def test_one_request_against_5_per_hour_resets_within_the_hour(offset_us):
    for run_algorithm in (fixed_window, sliding_window, token_bucket):
        step = run_algorithm(None, HOUR_START + offset_us, HOUR)
        decision = decide([step.outcome])
        assert decision.allowed and decision.remaining == 4
        assert 1 <= decision.reset <= 3600


def test_sliding_window_retry_after_a_burst_is_capped_at_the_window():
    """5 requests in the first 12 min (an hour / 5) weigh into the next hour: the exact
    wait is 1 h - 476 s + 12 min, more than the window; Retry-After says the window."""
    now = HOUR_START + 476 * S
    state = None
    for _ in range(5):
        step = sliding_window(state, now, HOUR)
        assert step.outcome.allowed
        state = step.state
    refused = sliding_window(state, now, HOUR)
    assert not refused.outcome.allowed
    assert refused.outcome.retry_ms == refused.outcome.reset_ms == 3_600_000
    assert decide([refused.outcome]).retry_after == 3600
    # an hour later: still refused, and the rest of the wait is 720 s - 476 s
    later = sliding_window(state, now + 3_600 * S, HOUR)
    assert not later.outcome.allowed and later.outcome.retry_ms == 244_000
    assert sliding_window(state, now + (3_600 + 244) * S, HOUR).outcome.allowed


@pytest.mark.parametrize("algorithm", [FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET])
def test_reset_after_one_request_is_exact(algorithm):
    outcome = evaluate(algorithm, [None], HOUR_START + 476 * S, [HOUR])[0][0].outcome
    # fixed and sliding: the hour's end; token bucket: one token back, 3600 s / 5
    assert outcome.reset_ms == (720_000 if algorithm == TOKEN_BUCKET else 3_124_000)


def test_token_bucket_reset_is_capped_when_the_limit_exceeds_the_window_in_us():
    limit = Limit(5000, 1)  # 5000 per ms: a 1 us interval, so the burst lasts 5 ms
    state = None
    for _ in range(3000):
        step = token_bucket(state, T0, limit)
        state = step.state
    assert step.outcome.allowed and step.outcome.reset_ms == 1
    assert step.ttl_ms == 3  # the state still lives until the bucket is full


@st.composite
def traffic(draw: st.DrawFn) -> tuple[str, Limit, int, list[int]]:
    """An algorithm, a limit, a start time and the gaps (us) between requests."""
    algorithm = draw(st.sampled_from([FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET]))
    count = draw(st.one_of(st.integers(1, 10), st.integers(1, 5000)))
    window_ms = draw(st.one_of(st.integers(1, 5000),
                               st.sampled_from([1000, 60_000, 3_600_000, 86_400_000]),
                               st.integers(1, 7 * 86_400_000)))
    start = T0 + draw(st.integers(0, 10**12))
    window_us = window_ms * 1000
    gaps = draw(st.lists(st.one_of(st.just(0), st.integers(0, window_us // 8),
                                   st.integers(0, window_us * 3 // 2)), max_size=60))
    return algorithm, Limit(count, window_ms), start, gaps


@settings(max_examples=300, deadline=None)
@given(traffic())
def test_reset_and_retry_stay_within_the_window(case):
    """For any traffic: reset and retry in [0, window]; a request at the retry time is
    admitted, unless the sliding window capped the retry at the window (then the rest
    of the wait is at most window / limit)."""
    algorithm, limit, start, gaps = case
    window_s = ceil_div(limit.window_ms, 1000)
    clock = Clock(start)
    store = MemoryStore(clock)
    keys = limit_keys("t", "k", algorithm, [limit])
    for gap in [0, *gaps]:
        clock.now += gap
        outcome = store.check_now(keys, algorithm, [limit])[0]
        assert 0 <= outcome.reset_ms <= limit.window_ms
        assert 0 <= outcome.retry_ms <= limit.window_ms
        decision = decide([outcome])
        assert 0 <= decision.reset <= window_s
        assert 0 <= decision.retry_after <= window_s
        if outcome.allowed:
            assert outcome.retry_ms == 0 and outcome.reset_ms >= 1
            continue
        assert outcome.retry_ms >= 1 and outcome.reset_ms == outcome.retry_ms
        assert decision.retry_after >= 1 and decision.reset == decision.retry_after
        probe = MemoryStore(Clock(clock.now + outcome.retry_ms * 1000))
        probe.entries = store.entries.copy()
        then = probe.check_now(keys, algorithm, [limit])[0]
        if algorithm == SLIDING_WINDOW and outcome.retry_ms == limit.window_ms:
            assert then.allowed or then.retry_ms <= ceil_div(limit.window_ms, limit.limit)
        else:
            assert then.allowed


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
