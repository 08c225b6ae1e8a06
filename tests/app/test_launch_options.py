"""app.py's flags: safe defaults, and the rules that keep the app from being exposed without a password."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

import app
from app import LaunchError, parse_launch_options

REPO = Path(__file__).resolve().parents[2]
NO_DESKTOP = {"PATH": "/usr/bin"}


def parse(*argv: str, platform: str = "linux", environ: dict[str, str] | None = None):
    return parse_launch_options(list(argv), platform=platform, environ=NO_DESKTOP if environ is None else environ)


def test_defaults_listen_on_loopback_7860_with_workspace_beside_app():
    options = parse()
    assert options.host == "127.0.0.1"
    assert options.port == 7860
    assert options.workspace == REPO / "workspace"
    assert options.auth is None and options.share is False
    assert options.max_concurrent_jobs == 1
    assert options.local_url == "http://127.0.0.1:7860"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "10.0.0.5", "::", "my-desktop.lan"])
def test_non_loopback_host_without_auth_is_refused(host):
    with pytest.raises(LaunchError, match="--auth"):
        parse("--host", host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_auth(host):
    assert parse("--host", host).host == host


def test_share_without_auth_is_refused_even_on_loopback():
    with pytest.raises(LaunchError, match="--share.*--auth"):
        parse("--share")


def test_auth_allows_share_and_other_hosts():
    options = parse("--host", "0.0.0.0", "--share", "--auth", "alice:s3cret")
    assert options.auth == ("alice", "s3cret")
    assert options.share is True
    assert options.local_url == "http://127.0.0.1:7860"


def test_password_may_contain_colons():
    assert parse("--auth", "alice:a:b:c").auth == ("alice", "a:b:c")


@pytest.mark.parametrize("auth", ["alice", "alice:", ":secret", "", ":"])
def test_malformed_auth_is_one_sentence(auth):
    with pytest.raises(LaunchError) as caught:
        parse("--auth", auth)
    message = str(caught.value)
    assert "user:password" in message and "\n" not in message


@pytest.mark.parametrize("flags", [["--port", "0"], ["--port", "70000"], ["--max-concurrent-jobs", "0"]])
def test_out_of_range_numbers_are_refused(flags):
    with pytest.raises(LaunchError):
        parse(*flags)


def test_flags_are_passed_through(tmp_path):
    options = parse("--port", "8123", "--workspace", str(tmp_path / "ws"), "--max-concurrent-jobs", "3")
    assert (options.port, options.workspace, options.max_concurrent_jobs) == (8123, tmp_path / "ws", 3)


@pytest.mark.parametrize("platform, environ, expected", [
    ("linux", {}, False),
    ("linux", {"DISPLAY": ":0"}, True),
    ("linux", {"WAYLAND_DISPLAY": "wayland-0"}, True),
    ("win32", {}, True),
    ("darwin", {}, True),
])
def test_browser_opens_only_where_a_desktop_exists(platform, environ, expected):
    assert parse(platform=platform, environ=environ).open_browser is expected
    assert parse("--no-browser", platform=platform, environ=environ).open_browser is False


def test_command_line_refusal_exits_2_with_one_line():
    result = subprocess.run([sys.executable, str(REPO / "app.py"), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "--auth" in result.stderr


def test_busy_port_is_reported_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError, match=f"127.0.0.1:{port}.*--port"):
            app.check_port_free("127.0.0.1", port)
