"""The app's front door: an ASGI wrapper, outside everything Gradio serves, that decides who is answered at all.

- Host: a request whose Host header names neither this machine's loopback names, nor the address the app listens
  on (all of this machine's addresses when it listens on 0.0.0.0 / ::), nor an `--allowed-host`, is refused (421):
  a web page on another site that re-points its own name at 127.0.0.1 (DNS rebinding) cannot drive the app.
- Origin: a request sent by a page of another origin (a browser says so in `Origin`) is refused (403), so no other
  site, not even one on another localhost port, reads answers or starts jobs; the app's own page is the only origin.
- With --auth, an anonymous request gets only a bare login form at `/` and the login endpoint; everything else
  answers 401 with one sentence and nothing about the app (no API description, paths or file names).

Pure ASGI (no Gradio import): app.py puts it around the app Gradio builds.
"""
from __future__ import annotations

import socket
from http.cookies import SimpleCookie
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import psutil

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
LOGIN_PATHS = frozenset({"/login", "/login/"})
STARTUP_PATH = "/gradio_api/startup-events"  # Gradio asks it of itself while starting (it answers `true`)
SHARE_DOMAIN = ".gradio.live"  # where public share links live
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in</title>
<style>body{font-family:system-ui,sans-serif;display:flex;justify-content:center;margin-top:15vh}
form{display:flex;flex-direction:column;gap:.6em;width:18em}input,button{font-size:1em;padding:.4em}
#message{color:#b00020;min-height:1.2em}</style></head>
<body><form id="login"><h2>Log in</h2>
<input name="username" autocomplete="username" placeholder="User name" required>
<input name="password" type="password" autocomplete="current-password" placeholder="Password" required>
<button type="submit">Log in</button><div id="message"></div></form>
<script>
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new URLSearchParams(new FormData(event.target));
  const answer = await fetch("login", {method: "POST", body, credentials: "same-origin"});
  if (answer.ok) { location.reload(); } else {
    document.getElementById("message").textContent = "Wrong user name or password.";
  }
});
</script></body></html>
"""


def host_name(value: str) -> str:
    """The host part of a Host header or an origin (`[::1]:7860` -> `::1`), lower case."""
    value = (value or "").strip().lower()
    if "://" in value:
        value = urlsplit(value).netloc
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def machine_names() -> set[str]:
    """Every address of this machine's interfaces, its host name and fully qualified name."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.add(address.address.split("%", 1)[0].lower())
    return names


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names the app answers to when listening on `bind`."""
    names = set(LOOPBACK_NAMES) | {host_name(name) for name in extra if name}
    bind = host_name(bind)
    if bind in ("0.0.0.0", "::", ""):
        names |= machine_names()
    else:
        names.add(bind)
    return frozenset(names)


class HttpGuard:
    def __init__(self, app, *, port: int, hosts: frozenset[str], any_host: bool = False,
                 logged_in: Callable[[dict[str, str]], bool] | None = None) -> None:
        """`logged_in(cookies)` is given when the app needs a login; `any_host` (a public share link, reached through
        its relay under a name not known in advance) skips the Host check, never the others."""
        self.app, self.port, self.hosts, self.any_host, self.logged_in = app, port, hosts, any_host, logged_in

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if not self.any_host and host_name(headers.get("host", "")) not in self.hosts:
            await self._refuse(scope, send, 421, "This app answers only to the names it was started for; start it "
                                                 "with --allowed-host NAME to reach it as NAME.")
            return
        origin = headers.get("origin")
        if origin is not None and not self._own_origin(origin, headers.get("host", "")):
            await self._refuse(scope, send, 403, "Requests sent by other web sites are refused; open the app itself.")
            return
        if self.logged_in is not None and not self.logged_in(_cookies(headers.get("cookie", ""))):
            path = scope.get("path", "/")[len(scope.get("root_path", "")):] or "/"
            method = scope.get("method", "GET")
            if path == "/" and method in ("GET", "HEAD") and scope["type"] == "http":
                await _respond(send, 200, LOGIN_PAGE, "text/html; charset=utf-8")
                return
            from_here = (scope.get("client") or ("",))[0] in LOOPBACK_NAMES
            if not (path in LOGIN_PATHS and method == "POST") and not (path == STARTUP_PATH and from_here):
                await self._refuse(scope, send, 401, "Log in first.")
                return
        await self.app(scope, receive, send)

    def _own_origin(self, origin: str, host_header: str) -> bool:
        """The app's own page: the origin names the host the request came to (an allowed one) on this port."""
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if self.any_host and parts.hostname.endswith(SHARE_DOMAIN):
            return True
        if host_name(parts.netloc) != host_name(host_header):
            return False
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        header_port = host_header.rsplit(":", 1)[1] if host_header.count(":") == 1 or "]:" in host_header else None
        return port == (int(header_port) if header_port and header_port.isdigit() else default)

    async def _refuse(self, scope, send, status: int, sentence: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _respond(send, status, sentence + "\n", "text/plain; charset=utf-8")


async def _respond(send: Callable[[dict], Awaitable[None]], status: int, text: str, content_type: str) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


def _cookies(header: str) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header counts as no cookies
        return {}
    return {key: morsel.value for key, morsel in jar.items()}
