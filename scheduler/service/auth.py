"""Secrets read from files: the service's accepted API tokens and the engines' API key.

`SecretFile` re-reads a file when it changes (a Kubernetes Secret volume swaps its files in), at most
once a second, and keeps the last good contents while it cannot be read. `TokenAuth` checks a
request's `Authorization: Bearer <token>` or `X-API-Key: <token>` against every accepted token with
`hmac.compare_digest` (no early exit), and answers 401 with `WWW-Authenticate: Bearer` otherwise.
Tokens are never logged, nor put in metric labels.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from aiohttp import web
from sbs.scheduler.service import protocol

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/readyz", "/metrics", "/openapi.json"})
"""Reachable without a token: probes, Prometheus and the API description."""


class SecretFile:
    """A file's non-blank lines (whitespace-stripped), re-read when the file changes."""

    def __init__(self, path: str, *, recheck_s: float = 1.0) -> None:
        self.path = path
        self._recheck_s = recheck_s
        self._checked = -float("inf")
        self._stamp: tuple[int, ...] | None = None
        self._lines: tuple[str, ...] = ()
        self._failing = False

    def lines(self) -> tuple[str, ...]:
        now = time.monotonic()
        if now - self._checked < self._recheck_s:
            return self._lines
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    self._lines = tuple(line.strip() for line in f if line.strip())
                self._stamp = stamp
                log.info("read %s: %d entries", self.path, len(self._lines))
            self._failing = False
        except (OSError, UnicodeDecodeError) as exc:
            if not self._failing:
                log.error(
                    "cannot read %s (%s); keeping the %d entries read before",
                    self.path,
                    exc,
                    len(self._lines),
                )
            self._failing = True
        return self._lines


def presented(request: web.Request) -> list[bytes]:
    """The credentials a request carries (`Authorization: Bearer`, `X-API-Key`)."""
    out = []
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        out.append(token.strip())
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        out.append(key)
    return [c.encode("utf-8", "surrogateescape") for c in out]


class TokenAuth:
    """The tokens file and the check of one request against it."""

    def __init__(self, tokens_file: str) -> None:
        self.tokens = SecretFile(tokens_file)
        if not self.tokens.lines():
            log.error("auth: no token in %s: every request needing one is refused", tokens_file)

    def allows(self, request: web.Request) -> bool:
        accepted = [t.encode() for t in self.tokens.lines()]
        ok = False
        for candidate in presented(request):
            for token in accepted:
                ok |= hmac.compare_digest(candidate, token)
        return ok

    def admits(self, request: web.Request) -> bool:
        """`request` needs no token (an open path) or carries an accepted one."""
        return request.path in OPEN_PATHS or self.allows(request)

    @staticmethod
    def refusal() -> web.Response:
        """The 401 for a request without an accepted token (sent before its body is read)."""
        body = protocol.error_body(
            "a valid API token is required: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
            type="authentication_error",
            code="invalid_api_key",
        )
        return web.json_response(
            body, status=401, headers={"WWW-Authenticate": "Bearer", "Connection": "close"}
        )
