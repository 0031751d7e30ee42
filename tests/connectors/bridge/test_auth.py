"""Credentials: bearer tokens and HTTP Basic, and refusing to start without any (no broker)."""

from __future__ import annotations

import base64

import pytest

from connectors.bridge.auth import Authenticator
from connectors.bridge.settings import BridgeConfigError, BridgeSettings


def _basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


AUTH = Authenticator([b"tok-1", b"tok-2"], b"argocd:s3cret", allow_anonymous=False)


@pytest.mark.parametrize(
    "header", ["Bearer tok-1", "bearer tok-2", "Bearer  tok-1 ", _basic("argocd:s3cret")]
)
def test_configured_credentials_are_accepted(header: str) -> None:
    assert AUTH.allows(header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer tok-3",
        "Bearer tok-1x",
        "Token tok-1",
        _basic("argocd:wrong"),
        "Basic !!notbase64",
        _basic("argocd"),
    ],
)
def test_missing_or_wrong_credentials_are_refused(header: str | None) -> None:
    assert not AUTH.allows(header)


def test_anonymous_bridge_accepts_requests_without_credentials_but_not_wrong_ones() -> None:
    auth = Authenticator([b"tok"], None, allow_anonymous=True)
    assert auth.allows(None)
    assert auth.allows("Bearer tok")
    assert not auth.allows("Bearer nope")


def test_tokens_are_split_on_commas_and_trimmed() -> None:
    settings = BridgeSettings(bridge_tokens=" a , b,,c ")
    assert settings.token_list() == [b"a", b"b", b"c"]


def test_bridge_refuses_to_start_without_credentials(monkeypatch) -> None:
    for var in (
        "SYNCTRAIL_BRIDGE_TOKENS",
        "SYNCTRAIL_BRIDGE_BASIC_AUTH",
        "SYNCTRAIL_BRIDGE_ALLOW_ANONYMOUS",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BridgeConfigError, match="SYNCTRAIL_BRIDGE_ALLOW_ANONYMOUS"):
        BridgeSettings().check()
    BridgeSettings(bridge_allow_anonymous=True).check()
    BridgeSettings(bridge_basic_auth="u:p").check()


def test_basic_auth_must_be_user_colon_password() -> None:
    with pytest.raises(BridgeConfigError, match="user:password"):
        BridgeSettings(bridge_basic_auth="nocolon").check()


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = BridgeSettings(bridge_tokens="very-secret", bridge_basic_auth="u:also-secret")
    assert "very-secret" not in repr(settings) and "also-secret" not in repr(settings)
