"""Bearer tokens to identities. Watching is open; commanding needs an identity that the
component lists as authorized (checked by the component itself)."""

from __future__ import annotations

import hmac

from aiohttp import web

from state.errors import NotPermittedError


class Authenticator:
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = dict(tokens)

    def identity_for(self, token: str) -> str:
        try:  # a header that is not UTF-8 reaches here as lone surrogates
            presented = token.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise NotPermittedError("unknown token") from e
        for known, identity in self._tokens.items():
            if hmac.compare_digest(known.encode(), presented):
                return identity
        raise NotPermittedError("unknown token")

    def identify(self, request: web.Request) -> str:
        """The identity behind a request: '' (a watcher) without a token; 401 for a bad one.

        The token comes from ``Authorization: Bearer …`` or, for browsers' WebSockets, which
        cannot set headers, from the ``token`` query parameter.
        """
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or request.query.get("token", "")
        if not token:
            return ""
        try:
            return self.identity_for(token)
        except NotPermittedError as e:
            raise web.HTTPUnauthorized(
                text="unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
            ) from e
