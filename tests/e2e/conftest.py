"""Real-browser fixtures: one app server per test session on a temporary workspace, a Chromium, a fresh page.

Chromium comes from the system (Debian's /usr/bin/chromium, or the path in LORAID_CHROMIUM). A missing browser
FAILS the tests: `./launch.sh test` installs it, and a browser test must never be skipped silently.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
SERVER_START_TIMEOUT_S = 180  # the first start builds the demo workspace
VIEWPORT = {"width": 1440, "height": 1000}
STALL_S = 120  # a job that writes no event and no log line for this long has stalled


def chromium_path() -> Path:
    return Path(os.environ.get("LORAID_CHROMIUM", "/usr/bin/chromium"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with code {process.returncode} before serving:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"app.py did not answer at {url} within {timeout_s} s:\n{_log_tail(log_path)}")


class AppServer:
    """`python app.py --no-browser --port P --workspace W` as a child process."""

    def __init__(self, workspace: Path, log_path: Path) -> None:
        self.workspace = workspace
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "app.py"), "--no-browser", "--port", str(self.port),
                 "--workspace", str(self.workspace)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until_serving(self.url, self.process, self.log_path, SERVER_START_TIMEOUT_S)

    def kill(self) -> None:
        """End the app abruptly (SIGKILL), as a crash or a closed terminal would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def stop_leftover_jobs(self) -> None:
        """Jobs are detached and outlive the app by design; a test run must not leave any behind."""
        from backend.jobs import JobManager

        manager = JobManager(self.workspace / "jobs")
        manager.refresh()
        for job in manager.list():
            if not job.is_finished:
                manager.stop(job.id, grace_s=2.0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            manager.refresh()
            if all(job.is_finished for job in manager.list()):
                return
            time.sleep(0.2)


def wait_while_moving(manager, job_id: str, done) -> None:
    """Wait until `done()` is true for as long as the job keeps moving: queued, or writing events or log lines.
    A busy machine makes this slower, not red; only a job that writes nothing for STALL_S fails it."""
    job = manager.get(job_id)
    last, moved = None, time.monotonic()
    while not done():
        manager.refresh()
        job = manager.get(job_id)
        size = sum(path.stat().st_size for path in (job.events_path, job.log_path) if path.exists())
        if job.status == "queued" or size != last:
            last, moved = size, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            raise AssertionError(f"job {job_id} ({job.status}) wrote nothing for {STALL_S} s; its log ends: "
                                 f"{job.log_path.read_text(errors='replace')[-500:] if job.log_path.exists() else ''}")
        time.sleep(0.3)


@contextlib.contextmanager
def suspended(jobs_dir: Path, job_id: str):
    """A running job's processes paused (SIGSTOP) while the block runs, resumed after: whatever the page shows then
    has to catch up with a job that cannot move, however fast or busy the machine is."""
    import psutil

    from backend.jobs import JobManager

    process = psutil.Process(JobManager(jobs_dir).get(job_id).pid)
    paused = [process, *process.children(recursive=True)]
    for each in paused:
        each.suspend()
    try:
        yield
    finally:
        for each in paused:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.resume()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("e2e")
    server = AppServer(folder / "workspace", folder / "app.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.stop_leftover_jobs()


@pytest.fixture
def start_app(tmp_path: Path):
    """Start extra app servers in a test (`start_app(workspace)`); all are stopped, with their jobs, afterwards."""
    servers: list[AppServer] = []

    def start(workspace: Path) -> AppServer:
        server = AppServer(workspace, tmp_path / f"app-{len(servers)}.log")
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        server.stop_leftover_jobs()


@pytest.fixture
def demo_workspace_copy(app_server: AppServer, tmp_path: Path) -> Path:
    """A workspace of its own for one test, copied from the session's demo workspace (no jobs) to save the build."""
    copy = tmp_path / "workspace"
    shutil.copytree(app_server.workspace, copy, ignore=shutil.ignore_patterns("jobs"))
    (copy / "jobs").mkdir()
    return copy


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        pytest.fail(f"Chromium not found at {executable}: run `./launch.sh test` (it installs Debian's chromium) "
                    f"or set LORAID_CHROMIUM to a Chromium/Chrome executable.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshot_path() -> Path:
    """Where the README's screenshot is saved (the browser test refreshes it on every run)."""
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT


def open_app(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Jobs", exact=True).wait_for()


# How long an `expect` keeps checking, and a click or fill waits for its element, before it fails. Each returns as
# soon as the page is right, so a long allowance costs nothing when the app answers; it only lets a busy machine
# (another training beside the tests) be slow.
EXPECT_TIMEOUT_MS = 60_000


@pytest.fixture
def open_page(browser):
    """`open_page(server)`: a fresh page of its own showing `server`'s app, closed after the test."""
    contexts = []

    def open_(server: AppServer):
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(EXPECT_TIMEOUT_MS)
        from playwright.sync_api import expect

        expect.set_options(timeout=EXPECT_TIMEOUT_MS)
        open_app(page, server.url)
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page, app_server):
    """A fresh browser page showing the session's app."""
    return open_page(app_server)
