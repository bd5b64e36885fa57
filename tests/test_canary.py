"""The canary's choice of a side (pygate.canary): the split, the sticky hash, the pins;
and the configuration errors of ``[routes.canary]`` and ``[routes.mirror]``."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from typing import Any

import pytest
from multidict import CIMultiDict

from pygate.canary import BUCKETS, Canary, Split, bucket, cookie_value
from pygate.config import ConfigError, load_data
from pygate.config.traffic import CanaryConfig
from pygate.context import Context, Identity

MAIN, CANARY = "main", "canary"


def canary(**settings: Any) -> Canary[str]:
    config = CanaryConfig.model_validate({"upstream": "users-v2", **settings})
    return Canary(config, MAIN, CANARY, "users-v2")


def ctx(ip: str = "10.0.0.1", consumer: str | None = None) -> Context:
    context = Context(request_id="r", client_ip=ip, method="GET", path="/", start=0.0)
    if consumer is not None:
        context.identity = Identity(id=consumer, consumer=consumer)
    return context


# -- the split -------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1, 10, 12.5, 33.3, 50, 99, 100])
def test_split_sends_exactly_the_weight_to_the_canary(weight: float) -> None:
    split = Split(weight)
    picks = [split.canary() for _ in range(10_000)]
    assert sum(picks) == round(weight * 100)


def test_split_spreads_the_canary_requests_evenly() -> None:
    split = Split(10)
    picks = [split.canary() for _ in range(1000)]
    positions = [i for i, pick in enumerate(picks) if pick]
    gaps = {b - a for a, b in pairwise(positions)}
    assert gaps == {10}  # every tenth request, never a burst
    half = Split(50)
    assert [half.canary() for _ in range(6)] == [False, True] * 3


# -- the sticky hash -------------------------------------------------------------------


def test_the_bucket_is_the_same_in_every_process() -> None:
    # Fixed values: a change of the hash would move every sticky caller to another side.
    assert bucket("users-v2", "c=alice") == 544
    assert bucket("users-v2", "h=caller-1") == 1355
    code = ("from pygate.canary import bucket; "
            "print(bucket('users-v2', 'c=alice'), bucket('users-v2', 'h=caller-1'))")
    for seed in ("0", "1", "12345"):  # Python's own hash() differs with each of these
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == ["544", "1355"]


def test_any_key_has_a_bucket() -> None:
    for key in ("h=caf\u00e9", "h=\udcff\udc80", "h=\ud800", "k=", "h=" + "x" * 10_000):
        assert 0 <= bucket("users-v2", key) < BUCKETS


def test_buckets_spread_callers_evenly_and_differ_by_canary() -> None:
    keys = [f"h=caller-{n}" for n in range(20_000)]
    below = sum(bucket("users-v2", key) < 1000 for key in keys)
    assert abs(below / len(keys) - 0.10) < 0.01
    # another canary upstream: another 10% of the callers (not always the same guinea pigs)
    other = {key for key in keys if bucket("orders-v2", key) < 1000}
    mine = {key for key in keys if bucket("users-v2", key) < 1000}
    assert len(other & mine) < 0.2 * len(mine)


def test_sticky_callers_keep_their_side_and_a_higher_weight_only_adds_callers() -> None:
    headers = [CIMultiDict({"X-User": f"u{n}"}) for n in range(2000)]
    at10 = canary(weight=10, sticky="header:X-User")
    at30 = canary(weight=30, sticky="header:X-User")
    sides10 = [at10.choose(h, ctx()) for h in headers]
    assert sides10 == [at10.choose(h, ctx()) for h in headers]  # again: the same sides
    sides30 = [at30.choose(h, ctx()) for h in headers]
    assert all(s30 == CANARY for s10, s30 in zip(sides10, sides30, strict=True)
               if s10 == CANARY)
    assert 0.07 < sides10.count(CANARY) / 2000 < 0.13
    assert 0.26 < sides30.count(CANARY) / 2000 < 0.34


def test_sticky_keys_and_their_fallback_to_the_client_ip() -> None:
    by_header = canary(weight=50, sticky="header:X-User")
    assert by_header.sticky_key(CIMultiDict({"x-user": "bob"}), ctx()) == "h=bob"
    assert by_header.sticky_key(CIMultiDict({"X-User": ""}), ctx("10.1.1.1")) == "ip=10.1.1.1"
    assert by_header.sticky_key(CIMultiDict(), ctx("10.1.1.1")) == "ip=10.1.1.1"
    by_cookie = canary(weight=50, sticky="cookie:session")
    cookies = CIMultiDict({"Cookie": "theme=dark; session=s-42"})
    assert by_cookie.sticky_key(cookies, ctx()) == "k=s-42"
    assert by_cookie.sticky_key(CIMultiDict({"Cookie": "sessionx=1"}), ctx()) == "ip=10.0.0.1"
    by_consumer = canary(weight=50, sticky="consumer")
    assert by_consumer.sticky_key(CIMultiDict(), ctx(consumer="alice")) == "c=alice"
    assert by_consumer.sticky_key(CIMultiDict(), ctx("10.2.2.2")) == "ip=10.2.2.2"
    by_ip = canary(weight=50, sticky="ip")
    assert by_ip.sticky_key(CIMultiDict({"X-User": "bob"}), ctx("10.3.3.3")) == "ip=10.3.3.3"


def test_cookie_values_are_read_plainly() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Cookie", "a=1; b = 2 ;broken; =x")
    headers.add("Cookie", "c=3=3; d=\"q\"")
    assert cookie_value(headers, "a") == "1"
    assert cookie_value(headers, "b") == "2"
    assert cookie_value(headers, "c") == "3=3"
    assert cookie_value(headers, "d") == '"q"'
    assert cookie_value(headers, "broken") is None
    assert cookie_value(CIMultiDict(), "a") is None


# -- pins and the extremes ---------------------------------------------------------------


def test_the_header_pins_a_request_to_either_side() -> None:
    pinned = canary(weight=50, header="X-Canary")
    for value, side in (("always", CANARY), (" Always ", CANARY), ("never", MAIN),
                        ("NEVER", MAIN)):
        assert {pinned.choose(CIMultiDict({"X-Canary": value}), ctx())
                for _ in range(20)} == {side}
    other = [pinned.choose(CIMultiDict({"X-Canary": "maybe"}), ctx()) for _ in range(20)]
    assert other.count(CANARY) == 10  # any other value: the split as usual
    # pins win over the weight and over stickiness
    off = canary(weight=0, sticky="ip", header="X-Canary")
    assert off.choose(CIMultiDict({"X-Canary": "always"}), ctx()) == CANARY
    full = canary(weight=100, sticky="ip", header="X-Canary")
    assert full.choose(CIMultiDict({"X-Canary": "never"}), ctx()) == MAIN


@pytest.mark.parametrize("sticky", ["none", "ip", "consumer", "header:X-User", "cookie:s"])
def test_weight_0_and_100_send_every_caller_to_one_side(sticky: str) -> None:
    for weight, side in ((0, MAIN), (100, CANARY)):
        chooser = canary(weight=weight, sticky=sticky)
        sides = {chooser.choose(CIMultiDict({"X-User": f"u{n}", "Cookie": f"s={n}"}),
                                ctx(f"10.0.{n // 250}.{n % 250}", consumer=f"c{n}"))
                 for n in range(1000)}
        assert sides == {side}
    assert max(bucket("users-v2", f"h=u{n}") for n in range(50_000)) < BUCKETS


def test_explain_says_which_side_a_request_takes() -> None:
    sticky = canary(weight=10, sticky="header:X-User", header="X-Canary")
    assert "10% of requests, sticky by header X-User" in sticky.describe()
    assert sticky.explain(CIMultiDict({"X-Canary": "always"})) == \
        "the canary (X-Canary: always)"
    side = CANARY if bucket("users-v2", "h=bob") < 1000 else MAIN
    said = sticky.explain(CIMultiDict({"X-User": "bob"}))
    assert said.startswith("the canary" if side == CANARY else "the route's upstream")
    assert sticky.explain(CIMultiDict()) == "decided by the caller's IP"
    assert canary(weight=0).explain(CIMultiDict()) == "the route's upstream (weight 0)"
    assert canary(weight=100).explain(CIMultiDict()) == "the canary (weight 100)"


# -- configuration errors ----------------------------------------------------------------


def config(route: dict[str, Any], **upstreams: Any) -> dict[str, Any]:
    return {"upstreams": {"users": {"targets": ["http://127.0.0.1:3001"]},
                          "users-v2": {"targets": ["http://127.0.0.1:3011"]}, **upstreams},
            "routes": [{"name": "users", "path": "/api/users", "upstream": "users", **route}]}


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_data(data)
    return [str(issue) for issue in caught.value.issues]


def test_canary_and_mirror_keys_are_checked_with_key_paths() -> None:
    found = errors(config({"canary": {"upstream": "users-v2", "weight": 101,
                                      "sticky": "session", "header": "X Canary"},
                           "mirror": {"upstream": "users-v2", "percent": -1,
                                      "max_body": "big", "extra": 1}}))
    assert "routes[0].canary.weight: expected a number from 0 to 100, found 101" in found
    assert any(e.startswith("routes[0].canary.sticky: expected \"none\", \"ip\", "
                            "\"consumer\", \"header:NAME\" or \"cookie:NAME\", found 'session'")
               for e in found)
    assert any(e.startswith("routes[0].canary.header: expected a header name") for e in found)
    assert "routes[0].mirror.percent: expected a number from 0 to 100, found -1" in found
    assert any(e.startswith("routes[0].mirror.max_body:") for e in found)
    assert any(e.startswith("routes[0].mirror.extra:") for e in found)
    assert any(e.startswith("routes[0].canary.weight: expected a number")
               for e in errors(config({"canary": {"upstream": "users-v2", "weight": True}})))
    missing = errors(config({"canary": {"upstream": "users-v2"}}))
    assert any(e.startswith("routes[0].canary.weight:") for e in missing)


def test_canary_and_mirror_upstreams_must_exist_and_differ() -> None:
    found = errors(config({"canary": {"upstream": "user-v2", "weight": 5},
                           "mirror": {"upstream": "shadow"}}))
    assert found == [
        "routes[0].canary.upstream: unknown upstream 'user-v2'; did you mean 'users-v2'?",
        "routes[0].mirror.upstream: unknown upstream 'shadow'; defined upstreams: users, "
        "users-v2",
    ]
    assert errors(config({"canary": {"upstream": "users", "weight": 5}})) == [
        "routes[0].canary.upstream: the canary must be another upstream than the route's "
        "('users')"]
    assert errors(config({"canary": {"upstream": "users-v2", "weight": 5},
                          "mirror": {"upstream": "users-v2"}})) == [
        "routes[0].mirror.upstream: the mirror must be another upstream than the route's "
        "canary ('users-v2')"]
    assert errors(config({"mirror": {"upstream": "http://shadow:1/path"}})) == [
        'routes[0].mirror.upstream: expected a target like "http://127.0.0.1:3001", '
        "found 'http://shadow:1/path'"]


def test_canary_and_mirror_need_a_proxy_route() -> None:
    data = config({})
    data["routes"][0].pop("upstream")
    data["routes"][0]["aggregate"] = {"calls": {"a": {"upstream": "users"}}}
    data["routes"][0]["canary"] = {"upstream": "users-v2", "weight": 5}
    data["routes"][0]["mirror"] = {"upstream": "users-v2"}
    assert errors(data) == [
        "routes[0].canary: canary is for proxy routes (with upstream = ...), not aggregate "
        "or graphql routes",
        "routes[0].mirror: mirror is for proxy routes (with upstream = ...), not aggregate "
        "or graphql routes",
    ]


def test_weights_may_come_from_the_environment() -> None:
    loaded = load_data(config({"canary": {"upstream": "users-v2", "weight": "${W:-12.5}"},
                                "mirror": {"upstream": "http://127.0.0.1:9", "percent": "5"}}),
                       env={})
    route = loaded.routes[0]
    assert route.canary is not None and route.canary.weight == 12.5
    assert route.mirror is not None and route.mirror.percent == 5
    assert route.mirror.max_body == 1024 * 1024
