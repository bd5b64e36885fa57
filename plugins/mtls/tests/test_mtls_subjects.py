"""Subject normalisation: pure unit tests, no gateway."""

from __future__ import annotations

import pytest
from pygate_mtls.subjects import normalise


@pytest.mark.parametrize("spelling", [
    "cn=payments-svc,o=example",
    "CN=Payments-Svc, O=Example",
    "commonName=payments-svc ;  organizationName = Example",
    "2.5.4.3=payments\\-svc,OID.2.5.4.10=EXAMPLE",
    "CN=payments\\2Dsvc,O=Example",
    "CN=  payments-svc  ,O=Example",
])
def test_spellings_of_one_subject_are_equal(spelling: str) -> None:
    assert normalise(spelling) == normalise("CN=payments-svc,O=Example")


def test_the_order_of_rdns_counts_the_order_inside_one_does_not() -> None:
    assert normalise("CN=x,O=y") != normalise("O=y,CN=x")
    assert normalise("CN=a+UID=b,DC=example") == normalise("UID=b+CN=a,DC=example")


def test_escapes_and_inner_spaces() -> None:
    assert normalise("CN=Smith\\, John,O=Example") == normalise("CN=smith\\2C  john,O=Example")
    assert normalise("CN=Smith\\, John") != normalise("CN=Smith,CN=John")
    assert normalise("CN=caf\\C3\\A9") == normalise("CN=Café")
    assert normalise("emailAddress=Svc@Example.com") == normalise(
        "1.2.840.113549.1.9.1=svc@example.com")  # how cryptography prints it


@pytest.mark.parametrize(("text", "message"), [
    ("", "found an empty string"),
    ("payments-svc", "expected TYPE=value pairs"),
    ("=x,O=y", "expected TYPE=value pairs"),
    ("CN=x\\", "dangling backslash"),
])
def test_what_is_not_a_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise(text)
