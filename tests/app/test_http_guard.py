"""The app over plain HTTP, as a hostile client sees it: with --auth an anonymous client learns nothing (no API
description, no paths, no file names); a foreign Host header and another site's Origin are refused; after logging
in, the app is there. One real `app.py` process on a demo workspace, plus the guard alone on a tiny ASGI app."""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from backend.system.http_guard import HttpGuard, allowed_hosts, host_name

REPO = Path(__file__).resolve().parents[2]
ANONYMOUS_PATHS = ["/", "/config", "/gradio_api/info", "/gradio_api/openapi.json", "/info", "/openapi.json",
                   "/docs", "/gradio_api/upload", "/gradio_api/file=workspace.json", "/file=workspace.json",
                   "/theme.css", "/gradio_api/queue/join", "/assets/index.js", "/manifest.json",
                   "/gradio_api/api/predict", "/favicon.ico", "/user", "/token", "/logout"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port: int, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, dict(response.getheaders()), data


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    from backend.models.demo import build_demo_workspace

    workspace = build_demo_workspace(tmp_path_factory.mktemp("guard") / "ws", seed=0).root
    port = free_port()
    log = open(workspace.parent / "app.log", "wb")
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-browser", "--port", str(port),
                                "--workspace", str(workspace), "--auth", "alice:s3cret"],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:  # waits on the app's own readiness line, not on a clock
            text = (workspace.parent / "app.log").read_text(errors="replace")
            if "is running at" in text:
                break
            if process.poll() is not None:
                raise AssertionError(f"app.py ended early:\n{text[-3000:]}")
            time.sleep(0.2)
        yield port, workspace
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_anonymous_requests_reveal_nothing(auth_app):
    port, workspace = auth_app
    for path in ANONYMOUS_PATHS:
        for method in ("GET", "POST"):
            status, headers, body = request(port, path, method)
            if path == "/" and method == "GET":
                assert status == 200 and "Log in" in body and 'name="password"' in body
            else:
                assert status == 401 and body.strip() == "Log in first.", (method, path, status, body[:200])
            for secret in (str(workspace), workspace.name, ".safetensors", "gradio_api", "demo-t2v", "transformer",
                           "predict", "api_name", "components", "dependencies"):
                assert secret not in body, (method, path, secret)


def test_a_foreign_host_or_origin_is_refused_even_after_login(auth_app):
    port, _ = auth_app
    status, _, body = request(port, "/", headers={"Host": f"attacker.example:{port}"})
    assert status == 421 and "--allowed-host" in body
    form = urllib.parse.urlencode({"username": "alice", "password": "s3cret"}).encode()
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = request(port, "/login", "POST", {**form_headers, "Origin": f"http://localhost:{port + 1}"}, form)
    assert status == 403
    status, _, body = request(port, "/login", "POST", {**form_headers, "Origin": f"http://127.0.0.1:{port}"},
                              urllib.parse.urlencode({"username": "alice", "password": "wrong"}).encode())
    assert status == 400
    status, headers, body = request(port, "/login", "POST", {**form_headers, "Origin": f"http://127.0.0.1:{port}"},
                                    form)
    assert status == 200 and json.loads(body) == {"success": True}
    cookie = "; ".join(part.split(";", 1)[0] for part in headers["set-cookie"].split(", ") if "access-token" in part)
    status, _, body = request(port, "/config", headers={"Cookie": cookie})
    assert status == 200 and "components" in body  # logged in: the app is all there
    status, _, _ = request(port, "/config", headers={"Cookie": cookie, "Host": f"rebind.example:{port}"})
    assert status == 421
    status, headers, _ = request(port, "/config", headers={"Cookie": cookie, "Origin": f"http://localhost:{port + 7}"})
    assert status == 403 and "access-control-allow-origin" not in {k.lower() for k in headers}


def run_guard(guard: HttpGuard, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def inner_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1:7860", 200), ("localhost:7860", 200), ("[::1]:7860", 200), ("LOCALHOST", 200),
    ("evil.example:7860", 421), ("127.0.0.1.evil.example", 421), ("", 421), ("studio.lan:7860", 200),
])
def test_host_names_on_a_loopback_bind(host, expected):
    guard = HttpGuard(inner_app, port=7860, hosts=allowed_hosts("127.0.0.1", ["studio.lan"]))
    assert run_guard(guard, "/", {"Host": host})[0] == expected


@pytest.mark.parametrize("origin, expected", [
    ("http://127.0.0.1:7860", 200), ("http://localhost:7860", 403), ("http://127.0.0.1:7861", 403),
    ("null", 403), ("http://evil.example", 403), ("https://127.0.0.1:7860", 200),
])
def test_only_the_apps_own_origin(origin, expected):
    guard = HttpGuard(inner_app, port=7860, hosts=allowed_hosts("127.0.0.1"))
    assert run_guard(guard, "/x", {"Host": "127.0.0.1:7860", "Origin": origin}, "POST")[0] == expected


def test_anonymous_only_login_and_logged_in_everything():
    guard = HttpGuard(inner_app, port=7860, hosts=allowed_hosts("127.0.0.1"),
                      logged_in=lambda cookies: cookies.get("access-token-x") == "good")
    host = {"Host": "127.0.0.1:7860"}
    assert run_guard(guard, "/gradio_api/info", host) == (401, b"Log in first.\n")
    assert run_guard(guard, "/login", host, "POST") == (200, b"inner")
    assert run_guard(guard, "/", host)[1].startswith(b"<!doctype html>")
    assert run_guard(guard, "/gradio_api/info", {**host, "Cookie": "access-token-x=bad"})[0] == 401
    assert run_guard(guard, "/gradio_api/info", {**host, "Cookie": "access-token-x=good"}) == (200, b"inner")


def test_host_name_parsing():
    assert [host_name(v) for v in ("[::1]:80", "Example.COM:1", "http://a.b:9/x", "a.b.")] == ["::1", "example.com",
                                                                                               "a.b", "a.b"]
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0") or True
    assert "127.0.0.1" in allowed_hosts("0.0.0.0") and "192.0.2.1" not in allowed_hosts("127.0.0.1")
