"""The reshaping rules, without a gateway."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pygate_bff_shape import ShapeConfig, lookup, reshape

BODY = {
    "user": {"name": "Ann", "address": {"city": "Oslo"}},
    "orders": [{"id": "o1", "status": "new"}, {"id": "o2", "status": "paid"}],
    "recommended": None,
}


def test_lookup_follows_keys_and_list_indexes() -> None:
    assert lookup(BODY, "user.address.city") == "Oslo"
    assert lookup(BODY, "orders.1.status") == "paid"
    assert lookup(BODY, "orders") == BODY["orders"]
    for broken in ("user.phone", "orders.9.id", "orders.x", "recommended.sku", "user.name.x"):
        assert lookup(BODY, broken) is None


def test_pick_then_drop_nulls_then_envelope() -> None:
    config = ShapeConfig(pick={"name": "user.name", "last": "orders.0.status",
                               "next": "recommended.0"}, drop_nulls=True, envelope="data")
    assert reshape(BODY, config) == {"data": {"name": "Ann", "last": "new"}}
    assert reshape(BODY, ShapeConfig(drop_nulls=True)) == {
        "user": BODY["user"], "orders": BODY["orders"]}
    assert reshape(BODY, ShapeConfig(envelope="data")) == {"data": BODY}


def test_nothing_configured_changes_nothing() -> None:
    assert not ShapeConfig().changes_anything
    assert ShapeConfig(drop_nulls=True).changes_anything


@pytest.mark.parametrize("settings", [{"pick": {"a": "user..name"}}, {"pick": {"": "x"}},
                                      {"envelope": ""}, {"pik": {}}])
def test_invalid_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ShapeConfig.model_validate(settings)
