"""CPU use of an idle page: the app on a workspace, Chromium opening the tabs one after another.

After each tab is opened the page is left alone for `--seconds`; the CPU used meanwhile by the app server and by
Chromium is printed as a percentage of one core. Opened tabs stay rendered, so the figures add up tab by tab.

    python bench/bench_page_cpu.py --workspace WS      (a workspace with finished jobs shows the polling cost)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
TABS = ["Dataset", "Train", "LORAID", "Merge", "EMA", "Generate", "Jobs"]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def wait_for(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"The app did not answer at {url} within {timeout_s} s.")


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="workspace folder (default: a new demo workspace)")
    parser.add_argument("--seconds", type=float, default=10.0, help="idle time measured per tab")
    parser.add_argument("--port", type=int, default=7941)
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp()) / "workspace"
    server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-browser", "--port", str(args.port),
                               "--workspace", str(workspace)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_for(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Jobs", exact=True).wait_for()
            chromium = [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name()]
            print(f"{'tab opened':<10} {'server %':>9} {'chromium %':>11}")
            for tab in TABS:
                page.get_by_role("tab", name=tab, exact=True).click()
                time.sleep(3)  # let the tab's first events settle
                groups = [[psutil.Process(server.pid)], chromium]
                before = [cpu_seconds(group) for group in groups]
                time.sleep(args.seconds)
                server_share, chromium_share = (100 * (cpu_seconds(group) - start) / args.seconds
                                                for group, start in zip(groups, before))
                print(f"{tab:<10} {server_share:>9.0f} {chromium_share:>11.0f}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
