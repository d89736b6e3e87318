"""The gateway's HTTP face: the widget's files, /healthz, /metrics, and the /ws gate.

Every response carries the security headers (a Content-Security-Policy that the
widget's page satisfies, no sniffing, no referrer, no framing) and no
``Server`` header; only GET is served (405 otherwise); CORS is sent only for
the origin configured (``allow_cors``).
"""

from __future__ import annotations

import base64
import hashlib
import http
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from chequered import log as logmod
from consumers.gateway.core.admission import Admission, Refusal
from consumers.gateway.core.session import Counts, clip
from consumers.gateway.core.settings import GatewaySettings

log = logmod.get(__name__)

WS_PATH = "/ws"
TEXT = "text/plain; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/leaderboard.js": ("leaderboard.js", "text/javascript; charset=utf-8"),
    "/leaderboard.css": ("leaderboard.css", "text/css; charset=utf-8"),
}
# An inline block: its tag's attributes, then the text the browser hashes (exactly the
# bytes between the tags). A <script src=...> has no inline text to allow.
_INLINE = {
    "script": re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.S | re.I),
    "style": re.compile(rb"<style\b([^>]*)>(.*?)</style\s*>", re.S | re.I),
}


def content_security_policy(pages: list[bytes]) -> str:
    """A policy that lets the widget's pages run and nothing else: their own files, the
    inline blocks they carry (by hash, so no other inline code runs), websocket to the
    same host, no plugins, no framing, no forms, no <base>."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for page in pages:
        for kind, pattern in _INLINE.items():
            for attributes, block in pattern.findall(page):
                if b"src=" in attributes.lower():
                    continue
                digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
                hashes[kind].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes["script"]]),
            " ".join(["style-src 'self'", *hashes["style"]]),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def load_files(web_dir: Path) -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path, (name, content_type) in FILES.items():
        file = web_dir / name
        if file.is_file():
            files[path] = (file.read_bytes(), content_type)
        else:
            log.warning("web_file_missing", file=str(file))
    return files


@dataclass(frozen=True, slots=True)
class Face:
    """The headers every response carries."""

    csp: str
    cors: str | None

    def response(
        self, status: int, body: bytes, content_type: str, *extra: tuple[str, str]
    ) -> Response:
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("Content-Security-Policy", self.csp),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Connection", "close"),
                *extra,
            ]
        )
        if self.cors is not None:
            headers["Access-Control-Allow-Origin"] = self.cors
            headers["Vary"] = "Origin"
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    def refusal(self, refusal: Refusal) -> Response:
        return self.response(refusal.status, (refusal.text + "\n").encode(), TEXT)


def peer_address(conn: ServerConnection) -> str:
    remote = conn.remote_address
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return str(remote)


def is_local(address: str, headers: Headers) -> bool:
    """A request from this host that no proxy passed on (a proxy's requests all look local)."""
    if "Forwarded" in headers or "X-Forwarded-For" in headers:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _token(query: str, headers: Headers) -> str | None:
    values = parse_qs(query).get("token")
    if values:
        return values[0]
    auth = headers.get_all("Authorization")
    if len(auth) == 1 and auth[0].startswith("Bearer "):
        return auth[0].removeprefix("Bearer ")
    return None


class Routes:
    """``process_request`` of the public listener (and of the metrics listener)."""

    def __init__(
        self,
        settings: GatewaySettings,
        counts: Counts,
        admission: Admission,
        *,
        health: Callable[[], tuple[bool, dict[str, object]]],
        metrics: Callable[[], bytes],
    ) -> None:
        self.settings = settings
        self.counts = counts
        self.admission = admission
        self.health = health
        self.metrics = metrics
        self.files = load_files(settings.web_dir)
        pages = [body for body, kind in self.files.values() if kind.startswith("text/html")]
        self.face = Face(content_security_policy(pages), settings.allow_cors)

    def public(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if request.method != "GET":
            self.counts.http["method"] += 1
            return self.face.response(
                405, f"{request.method[:16]} is not served; GET only\n".encode(), TEXT,
                ("Allow", "GET"),
            )  # fmt: skip
        if path == WS_PATH:
            return self._gate(conn, request, parts.query)
        self.counts.http[path if path in self._known() else "other"] += 1
        if path in self.files:
            body, content_type = self.files[path]
            return self.face.response(200, body, content_type)
        if path == "/healthz":
            return self._healthz()
        if path == "/metrics":
            address = peer_address(conn)
            local = is_local(address, request.headers)
            token = _token(parts.query, request.headers)
            refusal = self.admission.metrics(local=local, token=token)
            if refusal is not None:
                return self.face.refusal(refusal)
            return self.face.response(200, self.metrics(), METRICS_TYPE)
        return self.face.response(404, f"not found: {clip(path, 64)}\n".encode(), TEXT)

    def private(self, _conn: ServerConnection, request: Request) -> Response:
        """The metrics listener: /metrics and /healthz only, never a websocket."""
        path = urlsplit(request.path).path
        if request.method != "GET":
            return self.face.response(405, b"GET only\n", TEXT, ("Allow", "GET"))
        if path == "/metrics":
            return self.face.response(200, self.metrics(), METRICS_TYPE)
        if path == "/healthz":
            return self._healthz()
        return self.face.response(404, b"see /metrics\n", TEXT)

    def _healthz(self) -> Response:
        ok, detail = self.health()
        body = json.dumps({"ok": ok, **detail}).encode()
        return self.face.response(200 if ok else 503, body, "application/json")

    def _known(self) -> set[str]:
        return {*self.files, "/healthz", "/metrics"}

    def _gate(self, conn: ServerConnection, request: Request, query: str) -> Response | None:
        origins = request.headers.get_all("Origin")
        token = parse_qs(query).get("token", [""])[0] if self.settings.token else None
        refusal = self.admission.handshake(origins, token)
        if refusal is None:
            return None
        log.info(
            "client_refused",
            reason=refusal.reason,
            address=peer_address(conn),
            origin=[clip(o, self.settings.log_value_chars) for o in origins[:2]],
        )
        return self.face.refusal(refusal)
