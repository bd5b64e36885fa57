"""Configuration errors with their key paths, key loading, and key set parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pygate_jwt
from jwt_helpers import (
    HS512_SECRET,
    PLUGINS,
    bearer,
    config_errors,
    effective_configs,
    jwks,
    key,
    public_pem,
    token,
)
from pygate_jwt.config import JwtConfig
from pygate_jwt.keys import parse_jwks

UPSTREAM = "http://127.0.0.1:9"


def errors(global_table: dict[str, Any] | None = None,
           route_table: dict[str, Any] | None = None) -> str:
    """The rendered ConfigError for a config with these jwt tables."""
    route: dict[str, Any] = {"name": "r", "path": "/", "upstream": UPSTREAM}
    if route_table is not None:
        route["plugins"] = {"jwt": route_table}
    data: dict[str, Any] = {"routes": [route]}
    if global_table is not None:
        data["plugins"] = {"jwt": global_table}
    return config_errors(data)


def builds(table: dict[str, Any]) -> JwtConfig:
    data = {"plugins": {"jwt": table},
            "routes": [{"name": "r", "path": "/", "upstream": UPSTREAM}]}
    config: JwtConfig = effective_configs(data)[0]
    return config


def test_algorithms_are_required():
    text = errors({"secret": HS512_SECRET})
    assert "plugins.jwt.algorithms: required key is missing" in text


def test_algorithms_error_on_a_route_carries_the_route_path():
    text = errors(route_table={"secret": HS512_SECRET})
    assert "routes[0].plugins.jwt.algorithms: required key is missing" in text


@pytest.mark.parametrize("value", [["none"], ["RS256", "none"], ["None"], ["NONE"]])
def test_none_is_a_config_error(value):
    text = errors({"algorithms": value, "public_key": public_pem(key("rsa"))})
    assert 'plugins.jwt.algorithms: "none" is not allowed' in text


def test_unknown_algorithm_suggests_the_nearest():
    text = errors({"algorithms": ["rs256"], "public_key": public_pem(key("rsa"))})
    assert "plugins.jwt.algorithms: unsupported algorithm 'rs256'; did you mean 'RS256'?" in text


def test_empty_algorithms_is_an_error():
    assert "plugins.jwt.algorithms: expected at least one algorithm" in \
        errors({"algorithms": [], "secret": HS512_SECRET})


def test_hmac_with_public_key_is_algorithm_confusion():
    text = errors({"algorithms": ["HS256"], "public_key": public_pem(key("rsa"))})
    assert "plugins.jwt.public_key: HS256 cannot be used with public_key" in text
    assert "algorithm confusion" in text


def test_hmac_with_jwks_url_is_refused():
    text = errors({"algorithms": ["RS256", "HS512"], "jwks_url": "https://idp/jwks"})
    assert "plugins.jwt.jwks_url: HS512 cannot be used with jwks_url" in text


def test_asymmetric_algorithm_with_secret_is_refused():
    text = errors({"algorithms": ["RS256"], "secret": HS512_SECRET})
    assert "plugins.jwt.secret: secret is for HS256/HS384/HS512; RS256 needs public_key" in text


@pytest.mark.parametrize(("alg", "kind", "found"), [
    ("ES256", "rsa", "an RSA key (2048 bits)"),
    ("RS256", "ec", "an EC key on secp256r1"),
    ("ES384", "ec", "an EC key on secp256r1"),
    ("EdDSA", "rsa", "an RSA key (2048 bits)"),
    ("PS256", "ed25519", "an Ed25519 key"),
])
def test_public_key_type_must_fit_every_algorithm(alg, kind, found):
    text = errors({"algorithms": [alg], "public_key": public_pem(key(kind))})
    assert f"plugins.jwt.public_key: public_key is {found}, which cannot verify {alg}" in text


def test_one_key_source_is_required():
    assert "plugins.jwt: one of secret (HS*), public_key or jwks_url is required" in \
        errors({"algorithms": ["RS256"]})


def test_only_one_key_source():
    text = errors({"algorithms": ["RS256"], "public_key": public_pem(key("rsa")),
                   "jwks_url": "https://idp/jwks"})
    assert "plugins.jwt: give only one of secret, public_key or jwks_url " \
           "(found public_key and jwks_url)" in text


def test_short_hmac_secret_is_refused():
    text = errors({"algorithms": ["HS256"], "secret": "changeme"})
    assert "plugins.jwt.secret: HS256 needs a secret of at least 32 bytes" in text
    assert "changeme" not in text


def test_unknown_key_suggests_the_nearest():
    text = errors({"algorithms": ["HS512"], "secret": HS512_SECRET, "audiance": "x"})
    assert "plugins.jwt.audiance: unknown key; did you mean 'audience'?" in text


@pytest.mark.parametrize(("table", "expected"), [
    ({"token_from": ["cookie"]}, "plugins.jwt.token_from: expected sources like"),
    ({"token_from": []}, "plugins.jwt.token_from: expected at least one source"),
    ({"jwks_min_refresh": "soon"}, 'plugins.jwt.jwks_min_refresh: expected a duration'),
    ({"leeway": "-1s"}, "plugins.jwt.leeway: expected a duration"),
    ({"claims": {"id": ""}}, "plugins.jwt.claims: claims.id: expected a claim name"),
])
def test_other_settings_are_checked(table, expected):
    assert expected in errors({"algorithms": ["HS512"], "secret": HS512_SECRET, **table})


def test_jwks_url_must_be_http():
    assert "plugins.jwt.jwks_url: expected an http(s) URL" in \
        errors({"algorithms": ["RS256"], "jwks_url": "file:///etc/keys.json"})


def test_public_key_file_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwt.pem").write_text(public_pem(key("rsa")))
    monkeypatch.chdir(tmp_path)
    config = builds({"algorithms": ["RS256"], "public_key": "keys/jwt.pem"})
    assert config.public_key == "keys/jwt.pem"
    assert config.static_key is not None


def test_public_key_file_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = errors({"algorithms": ["RS256"], "public_key": "keys/absent.pem"})
    assert "plugins.jwt.public_key: cannot read the public key file" in text
    assert "absent.pem" in text and "not found" in text


def test_public_key_may_be_a_certificate():
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    private = serialization.load_pem_private_key(
        key("rsa").export_to_pem(private_key=True, password=None), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(private, hashes.SHA256()))  # type: ignore[arg-type]
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert builds({"algorithms": ["RS256"], "public_key": pem}).static_key is not None


def test_private_key_is_refused_without_quoting_it():
    pem = key("rsa").export_to_pem(private_key=True, password=None).decode()
    text = errors({"algorithms": ["RS256"], "public_key": pem})
    assert "plugins.jwt.public_key: public_key holds a private key" in text
    assert pem.splitlines()[1] not in text


def test_garbage_public_key_is_refused():
    text = errors({"algorithms": ["RS256"],
                   "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"})
    assert "plugins.jwt.public_key: public_key is not a PEM public key or certificate" in text


def test_parsed_keys_are_shared_between_routes():
    pem = public_pem(key("rsa"))
    data = {"plugins": {"jwt": {"algorithms": ["RS256"], "public_key": pem}},
            "routes": [{"name": "a", "path": "/a", "upstream": UPSTREAM},
                       {"name": "b", "path": "/b", "upstream": UPSTREAM,
                        "plugins": {"jwt": {"audience": "b"}}}]}
    a, b = effective_configs(data)  # the global table's (route a's), route b's
    assert a is not b and a.static_key is b.static_key


def test_secret_is_not_shown_by_explain():
    # what `pygate explain` shows of a plugin config: its JSON dump
    shown = builds({"algorithms": ["HS512"], "secret": HS512_SECRET}).model_dump(mode="json")
    assert HS512_SECRET not in json.dumps(shown, default=str)
    assert shown["algorithms"] == ["HS512"]


def test_jwks_parsing_keeps_only_public_signing_keys():
    document = jwks(key("rsa", "r1"), key("ec", "e1"), key("ed25519", "o1"),
                    alg={"r1": "PS256"})
    document["keys"].append({"kty": "oct", "kid": "s1", "k": "c2VjcmV0"})
    document["keys"].append({**jwks(key("ec", "enc"))["keys"][0], "use": "enc"})
    document["keys"].append(key("ec", "priv").export_private(as_dict=True))
    document["keys"].append({"kty": "RSA", "kid": "broken", "n": "x"})
    document["keys"].append("not an object")
    parsed = parse_jwks(document)
    assert [(k.kid, k.alg) for k in parsed] == [("r1", "PS256"), ("e1", None), ("o1", None)]
    assert parsed[0].fits("PS256") and not parsed[0].fits("RS256")
    assert parsed[1].fits("ES256") and not parsed[1].fits("ES384")
    assert parsed[2].fits("EdDSA") and not parsed[2].fits("ES256")
    with pytest.raises(ValueError):
        parse_jwks({"no": "keys"})


async def test_plugin_is_found_through_its_entry_point(pygate_gateway, fake_upstream):
    """No plugin objects given: the installed distribution's entry point is loaded."""
    upstream = await fake_upstream()
    gateway = await pygate_gateway({
        "plugins": {"jwt": {"algorithms": ["HS512"], "secret": HS512_SECRET}},
        "routes": [{"name": "r", "path": "/", "upstream": upstream.url}]})
    assert (await gateway.request("GET", "/"))[0] == 401
    status, _, _ = await gateway.request("GET", "/", headers=bearer(token(key("hs512"),
                                                                          "HS512")))
    assert status == 200
    assert PLUGINS["jwt"] is pygate_jwt
