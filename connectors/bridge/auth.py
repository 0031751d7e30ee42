"""Bearer-token and HTTP Basic authentication, compared in constant time (pure)."""

from __future__ import annotations

import base64
import binascii
import hmac

CHALLENGE = 'Bearer realm="synctrail", Basic realm="synctrail", charset="UTF-8"'


class Authenticator:
    """Decides whether an ``Authorization`` header carries accepted credentials."""

    def __init__(self, tokens: list[bytes], basic: bytes | None, allow_anonymous: bool) -> None:
        self._tokens = list(tokens)
        self._basic = basic
        self._anonymous = allow_anonymous

    def allows(self, authorization: str | None) -> bool:
        """True if the request may proceed.

        Without a header only an anonymous bridge accepts it; with one, the credentials must
        match (a wrong token is refused even when anonymous requests are allowed).
        """
        if not authorization:
            return self._anonymous
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == "bearer":
            return self._token_ok(credentials.encode())
        if scheme == "basic":
            return self._basic_ok(credentials)
        return False

    def _token_ok(self, presented: bytes) -> bool:
        ok = False
        # Compare against every token, so the time taken does not say which one nearly matched.
        for token in self._tokens:
            ok |= hmac.compare_digest(token, presented)
        return ok

    def _basic_ok(self, encoded: str) -> bool:
        if self._basic is None:
            return False
        try:
            decoded = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return False
        return hmac.compare_digest(self._basic, decoded)
