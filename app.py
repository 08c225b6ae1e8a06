"""LORAID Studio: start the local web app.

    python app.py [--host 127.0.0.1] [--port 7860] [--workspace DIR] [--no-browser]
                  [--auth user:password] [--share] [--max-concurrent-jobs N]

Safe by default: the app listens on 127.0.0.1 only. Listening on any other address, or making a public
share link, requires `--auth` so that nobody else on the network can drive the app without a password.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_WORKSPACE = APP_DIR / "workspace"


class LaunchError(ValueError):
    """A flag combination the app refuses; the message is one sentence for the terminal."""


@dataclass(frozen=True)
class LaunchOptions:
    host: str
    port: int
    workspace: Path
    open_browser: bool
    auth: tuple[str, str] | None
    share: bool
    max_concurrent_jobs: int
    allowed_hosts: tuple[str, ...] = ()

    @property
    def local_url(self) -> str:
        shown_host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        return f"http://{shown_host}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="LORAID Studio: the local web app.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1; any other address requires --auth)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default 7860)")
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE,
                        help="workspace folder (default ./workspace beside app.py; the demo is created if missing)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    parser.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                        help="require this user name and password (needed with --share or a non-loopback --host)")
    parser.add_argument("--share", action="store_true", help="make a public Gradio share link (requires --auth)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also answer requests addressed to NAME (a host name the app is reached by); repeat "
                             "for several")
    parser.add_argument("--max-concurrent-jobs", type=int, default=1, metavar="N",
                        help="how many jobs may run at the same time (default 1)")
    return parser


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise LaunchError("--auth must look like user:password (both parts non-empty, separated by the first ':').")
    return user, password


def desktop_available(platform: str = sys.platform, environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if platform.startswith("win") or platform == "darwin":
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def parse_launch_options(argv: list[str] | None = None, *, platform: str = sys.platform,
                         environ: dict[str, str] | None = None) -> LaunchOptions:
    """Parse the command line and apply the safety rules; raises LaunchError with one sentence."""
    args = build_parser().parse_args(argv)
    auth = parse_auth(args.auth) if args.auth is not None else None
    if auth is None and args.share:
        raise LaunchError("--share makes the app reachable from the internet, so it needs --auth user:password.")
    if auth is None and not is_loopback_host(args.host):
        raise LaunchError(f"listening on {args.host} lets other machines reach the app, so it needs "
                          f"--auth user:password (or keep the default --host 127.0.0.1).")
    if not 0 < args.port < 65536:
        raise LaunchError(f"--port {args.port} is not a valid port; use a number from 1 to 65535.")
    if args.max_concurrent_jobs < 1:
        raise LaunchError("--max-concurrent-jobs must be at least 1.")
    return LaunchOptions(
        host=args.host,
        port=args.port,
        workspace=args.workspace.expanduser().resolve(),
        open_browser=not args.no_browser and desktop_available(platform, environ),
        auth=auth,
        share=args.share,
        max_concurrent_jobs=args.max_concurrent_jobs,
        allowed_hosts=tuple(args.allowed_host),
    )


def ensure_workspace(root: Path) -> None:
    from backend.workspace import Workspace

    if Workspace(root).exists():
        return
    from backend.models.demo import build_demo_workspace

    print(f"Creating the demo workspace in {root} (first start only) ...", flush=True)
    build_demo_workspace(root)


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if os.name != "nt":  # as the server does; on Windows this flag would allow stealing a busy port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LaunchError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              f"another program may be using it, so pick another --port.") from None


def wait_until_answering(url: str, timeout_s: float = 120.0) -> None:
    """The server answers HTTP at `url` (any status: a login page counts), else a LaunchError."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=30):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise LaunchError(f"the app started but {url} did not answer within {timeout_s:.0f} s; check the proxy settings "
                      f"(NO_PROXY should include 127.0.0.1) and try again.")


@contextlib.contextmanager
def guarded_app(options: LaunchOptions):
    """While Gradio builds its server app, put backend/system/http_guard.py around it (outermost, before the
    server takes its first request): Host and Origin checks always, and with --auth nothing but a login form for
    anonymous requests."""
    from gradio.routes import App

    from backend.system.http_guard import HttpGuard, allowed_hosts

    original = App.__dict__["create_app"]  # the staticmethod itself, put back as it was

    def create_app(*args, **kwargs):
        app = original.__func__(*args, **kwargs)

        def logged_in(cookies: dict[str, str]) -> bool:
            tokens = [cookies.get(f"access-token{kind}-{app.cookie_id}") for kind in ("", "-unsecure")]
            return any(token and token in app.tokens for token in tokens)

        app.add_middleware(HttpGuard, port=options.port, hosts=allowed_hosts(options.host, options.allowed_hosts),
                           any_host=options.share, logged_in=logged_in if options.auth else None)
        return app

    App.create_app = staticmethod(create_app)
    try:
        yield
    finally:
        App.create_app = original


def serve(options: LaunchOptions) -> None:
    from backend.jobs import JobManager
    from backend.workspace import Workspace
    from ui.app import LAUNCH_STYLE, build_app

    workspace = Workspace(options.workspace)
    workspace.ensure_folders()
    manager = JobManager(workspace.jobs, max_concurrent=options.max_concurrent_jobs)
    blocks = build_app(workspace, manager)
    with guarded_app(options):
        _, _, share_url = blocks.launch(
            server_name=options.host,
            server_port=options.port,
            auth=options.auth,
            share=options.share,
            inbrowser=options.open_browser,
            prevent_thread_lock=True,
            quiet=True,
            _frontend=False,  # Gradio's own reachability check gives up after 3 s; the full page can take longer
            **LAUNCH_STYLE,
        )
    wait_until_answering(options.local_url)
    print(f"LORAID Studio is running at {options.local_url}  (workspace: {workspace.root})", flush=True)
    if not is_loopback_host(options.host):
        print(f"Listening on {options.host}: other machines can reach it and must log in.", flush=True)
    if share_url:
        print(f"Public share link: {share_url}", flush=True)
    print("Press Ctrl+C to quit.", flush=True)
    try:
        blocks.block_thread()
    finally:
        blocks.close()


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_launch_options(argv)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from backend.errors import UserError

    try:
        check_port_free(options.host, options.port)
        ensure_workspace(options.workspace)
        serve(options)
    except (UserError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
