"""Distinguished names (RFC 4514 strings) in a form that compares as X.500 names do.

Pure: no aiohttp, no pluggy. ``CN=Payments-Svc, O=Example`` and
``cn=payments-svc,o=example`` are the same subject: attribute types are matched by
their OID whatever their spelling (``CN``, ``cn``, ``commonName``, ``2.5.4.3``), values
case-insensitively with insignificant spaces ignored (RFC 4518), escapes undone
(``\\,`` and ``\\2C`` are a comma), and the attributes of a multi-valued RDN
(``CN=a+UID=b``) in any order. The order of the RDNs themselves is significant.
"""

from __future__ import annotations

import functools

# RFC 4514 section 3 names, the common extra ones, and the forms other tools print.
ATTRIBUTE_OIDS = {
    "CN": "2.5.4.3", "COMMONNAME": "2.5.4.3",
    "SN": "2.5.4.4", "SURNAME": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6", "COUNTRYNAME": "2.5.4.6",
    "L": "2.5.4.7", "LOCALITYNAME": "2.5.4.7",
    "ST": "2.5.4.8", "S": "2.5.4.8", "STATEORPROVINCENAME": "2.5.4.8",
    "STREET": "2.5.4.9", "STREETADDRESS": "2.5.4.9",
    "O": "2.5.4.10", "ORGANIZATIONNAME": "2.5.4.10",
    "OU": "2.5.4.11", "ORGANIZATIONALUNITNAME": "2.5.4.11",
    "TITLE": "2.5.4.12",
    "POSTALCODE": "2.5.4.17",
    "GIVENNAME": "2.5.4.42", "G": "2.5.4.42",
    "DC": "0.9.2342.19200300.100.1.25", "DOMAINCOMPONENT": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1", "USERID": "0.9.2342.19200300.100.1.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1", "E": "1.2.840.113549.1.9.1",
}

Attribute = tuple[str, str]  # (OID or upper-case type, normalised value)
Subject = tuple[tuple[Attribute, ...], ...]  # RDNs in the string's order


@functools.lru_cache(maxsize=4096)  # the same few subjects come back on every request
def normalise(text: str) -> Subject:
    """The comparable form of an RFC 4514 distinguished name.

    :raise ValueError: an empty name, an RDN without ``=``, an empty attribute type,
        a dangling escape.
    """
    if not text.strip():
        raise ValueError("expected a distinguished name like \"CN=payments-svc,O=Example\", "
                         "found an empty string")
    rdns = []
    for rdn in _split(text, ",;"):
        attributes = []
        for pair in _split(rdn, "+"):
            kind, sep, value = pair.partition("=")
            kind = kind.strip()
            if not sep or not kind:
                raise ValueError(f"expected TYPE=value pairs like \"CN=payments-svc\", found "
                                 f"{pair.strip()!r} in {text!r}")
            attributes.append((_attribute_type(kind), _value(value, text)))
        rdns.append(tuple(sorted(attributes)))
    return tuple(rdns)


def _split(text: str, separators: str) -> list[str]:
    """``text`` cut at every separator that is not escaped with a backslash."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _attribute_type(kind: str) -> str:
    upper = kind.upper()
    if upper.startswith("OID."):
        upper = upper[4:]
    return ATTRIBUTE_OIDS.get(upper, upper)


def _value(raw: str, text: str) -> str:
    """An attribute value with escapes undone, spaces collapsed, case folded."""
    if raw.lstrip(" ").startswith("#"):
        return raw.strip(" ").lower()  # a BER-encoded value (hex), compared in any case
    out = bytearray()
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "\\":
            out += char.encode()
            index += 1
            continue
        pair = raw[index + 1:index + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))  # \2C, or one byte of a UTF-8 character
            index += 3
        elif index + 1 < len(raw):
            out += raw[index + 1].encode()
            index += 2
        else:
            raise ValueError(f"a dangling backslash at the end of {text!r}")
    value = out.decode("utf-8", "replace")
    return " ".join(value.split()).casefold()
