"""The three rate-limit algorithms as pure functions of (stored state, now, limit).

Nothing here does I/O or reads a clock: the caller passes ``now_us`` (microseconds
since the epoch), the state it stored for one limit (or ``None``), and gets back an
:class:`Outcome` plus the state to store if the request is admitted. The memory
backend calls these functions; the Redis backend runs the same arithmetic in Lua
(:data:`pygate_rate_limit.backends.LUA`), so both agree to the millisecond.

All arithmetic is on integers, so that ``limit`` requests at one instant are always
exactly ``limit`` admissions, and Lua (whose numbers are doubles, exact below 2**53)
computes the same values.

- fixed window: windows aligned on the epoch; state ``(window_start_ms, count)``.
- sliding window: the weighted two-window estimate
  ``previous * (W - elapsed) / W + current``; state ``(window_start_ms, current,
  previous)``.
- token bucket: GCRA (the generic cell rate algorithm) with a burst of ``limit`` and
  one token back every ``window / limit``; state ``(theoretical_arrival_time_us,)``.

Every ``reset_ms`` and ``retry_ms`` lies in ``[0, window]`` (see :class:`Outcome`), so
``RateLimit-Reset`` and ``Retry-After`` never exceed the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

FIXED_WINDOW = "fixed-window"
SLIDING_WINDOW = "sliding-window"
TOKEN_BUCKET = "token-bucket"

State = tuple[int, ...]

# Outcome, Step and Decision are made on every request: plain slotted dataclasses, not
# frozen ones (whose __init__ sets each field through object.__setattr__, three times
# the instructions). Nothing changes them once made.


@dataclass(frozen=True, slots=True)
class Limit:
    """``limit`` requests per ``window_ms`` milliseconds."""

    limit: int
    window_ms: int


@dataclass(slots=True)
class Outcome:
    """One limit's verdict on one request.

    :param allowed: whether this limit lets the request through.
    :param limit: the limit's request count.
    :param remaining: requests left after this one (0 when refused).
    :param reset_ms: until the quota resets, at most the window: the end of the current
        window (fixed window: the whole limit is back; sliding window: the previous
        window's requests have stopped counting, while this window's fade out over the
        next one), a full bucket (token bucket); ``retry_ms`` when refused.
    :param retry_ms: until a request would be admitted, at most the window (see
        :func:`sliding_window` for the one case where the exact wait is longer); 0 when
        allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(slots=True)
class Step:
    """An outcome, and the state to store (with its time to live) if the request passes."""

    outcome: Outcome
    state: State
    ttl_ms: int


@dataclass(slots=True)
class Decision:
    """The verdict over every limit, in whole seconds, as the response headers show it."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fixed_window(state: State | None, now_us: int, limit: Limit) -> Step:
    window = limit.window_ms
    now_ms = now_us // 1000
    start = now_ms - now_ms % window
    count = state[1] if state is not None and state[0] == start else 0
    reset = start + window - now_ms
    if count + 1 > limit.limit:
        return Step(Outcome(False, limit.limit, 0, reset, reset), (start, count), reset)
    return Step(Outcome(True, limit.limit, limit.limit - count - 1, reset, 0),
                (start, count + 1), reset)


def sliding_window(state: State | None, now_us: int, limit: Limit) -> Step:
    """The weighted two-window estimate.

    Admitted, the reset is the end of the current window, not the time the estimate is
    back to 0: this window's requests weigh on it until the end of the next window, up
    to ``2 * window`` away. Refused, the wait is exact, except within the first
    ``window / limit`` of a window that already holds ``limit`` requests: those fade
    only after the roll-over, so the exact wait, ``window - elapsed + window / limit``,
    is longer than the window; it is capped at the window (a request then is refused
    with the rest of the wait, at most ``window / limit``).
    """
    window = limit.window_ms
    now_ms = now_us // 1000
    start = now_ms - now_ms % window
    elapsed = now_ms - start
    current = previous = 0
    if state is not None:
        if state[0] == start:
            current, previous = state[1], state[2]
        elif state[0] == start - window:
            previous = state[1]
    # everything below is scaled by `window` to stay in integers
    used = previous * (window - elapsed) + current * window
    ttl = start + 2 * window - now_ms
    if used + window > limit.limit * window:
        if current + 1 <= limit.limit:
            # the previous window's weight decays enough before this window ends
            retry = _ceil_div((window - elapsed) * previous - (limit.limit - current - 1) * window,
                              previous)
        else:
            # after the roll-over, `current` becomes the decaying previous window
            retry = min(window, window - elapsed
                        + _ceil_div((current - limit.limit + 1) * window, current))
        return Step(Outcome(False, limit.limit, 0, retry, retry), (start, current, previous), ttl)
    remaining = (limit.limit * window - used - window) // window
    # the reset is this window's end: the previous window's requests stop counting then
    return Step(Outcome(True, limit.limit, remaining, window - elapsed, 0),
                (start, current + 1, previous), ttl)


def emission_interval_us(limit: Limit) -> int:
    """GCRA's time between two tokens, in whole microseconds (at least 1)."""
    return max(1, limit.window_ms * 1000 // limit.limit)


def token_bucket(state: State | None, now_us: int, limit: Limit) -> Step:
    interval = emission_interval_us(limit)
    burst = interval * limit.limit
    tat = max(state[0], now_us) if state is not None else now_us
    new_tat = tat + interval
    allow_at = new_tat - burst
    if now_us < allow_at:
        retry = _ceil_div(allow_at - now_us, 1000)
        return Step(Outcome(False, limit.limit, 0, retry, retry), (tat,),
                    _ceil_div(tat - now_us, 1000))
    remaining = (now_us + burst - new_tat) // interval
    until_full = _ceil_div(new_tat - now_us, 1000)
    # a full bucket is at most `window` away, except when `limit` exceeds the window in
    # microseconds: the interval is then 1 us and the burst longer than the window
    reset = min(until_full, limit.window_ms)
    return Step(Outcome(True, limit.limit, remaining, reset, 0), (new_tat,), until_full)


Algorithm = Callable[[State | None, int, Limit], Step]

ALGORITHMS: dict[str, Algorithm] = {
    FIXED_WINDOW: fixed_window,
    SLIDING_WINDOW: sliding_window,
    TOKEN_BUCKET: token_bucket,
}


def evaluate(algorithm: str, states: Sequence[State | None], now_us: int,
             limits: Sequence[Limit]) -> tuple[list[Step], bool]:
    """Every limit's step; the request passes only if every limit allows it.

    The caller stores the steps' states only when the second value is true, so a
    refused request consumes nothing from any limit.
    """
    run = ALGORITHMS[algorithm]
    steps = [run(state, now_us, limit) for state, limit in zip(states, limits, strict=True)]
    return steps, all(step.outcome.allowed for step in steps)


def decide(outcomes: Sequence[Outcome]) -> Decision:
    """Combine the limits' outcomes into the values of the response headers.

    Admitted: the limit with the fewest requests remaining (ties: the smaller limit)
    gives ``RateLimit-*``. Refused: the refusing limit that frees last gives them, and
    ``Retry-After`` is when every limit admits again.
    """
    if len(outcomes) == 1:
        only = outcomes[0]
        if only.allowed:
            return Decision(True, only.limit, only.remaining, -(-only.reset_ms // 1000), 0)
        seconds = max(1, -(-only.retry_ms // 1000))
        return Decision(False, only.limit, 0, seconds, seconds)
    refused = [o for o in outcomes if not o.allowed]
    if refused:
        worst = max(refused, key=lambda o: (o.retry_ms, -o.limit))
        seconds = max(1, _ceil_div(worst.retry_ms, 1000))
        return Decision(False, worst.limit, 0, seconds, seconds)
    tightest = min(outcomes, key=lambda o: (o.remaining, o.limit))
    return Decision(True, tightest.limit, tightest.remaining,
                    _ceil_div(tightest.reset_ms, 1000), 0)
