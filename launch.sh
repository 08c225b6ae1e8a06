#!/usr/bin/env bash
# LORAID Studio launcher (Linux / macOS).
#   ./launch.sh [app flags]        set up .venv on first run, then start the app (flags go to app.py)
#   ./launch.sh test [pytest args] also install the test needs (incl. Chromium), then run the test suite
# A second start is fast: requirements are installed again only when requirements*.txt changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
CHROMIUM="${LORAID_CHROMIUM:-/usr/bin/chromium}"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in ${LORAID_PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ -x "$VENV_PY" ]; then
        return 0
    fi
    local python
    python="$(find_python)" || die "LORAID Studio needs Python 3.10 or newer; install it (e.g. 'sudo apt-get install python3 python3-venv') or set LORAID_PYTHON to its path."
    say "Creating the virtual environment in .venv with $python ..."
    "$python" -m venv "$VENV" ||
        { rm -rf "$VENV"; die "could not create .venv; on Debian/Ubuntu install the venv module with 'sudo apt-get install python3-venv'."; }
}

file_hash() {
    "$VENV_PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# install_requirements FILE: pip-installs FILE unless the hash stored in .venv says it is already installed.
install_requirements() {
    local file="$1" stamp="$VENV/.$(basename "$1").sha256" wanted
    wanted="$(file_hash "$file")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return 0
    fi
    say "Installing $file into .venv (first run or changed requirements; this can take several minutes) ..."
    "$VENV_PY" -m pip install --disable-pip-version-check -r "$file" ||
        die "installing $file failed (see pip's message above); check the network connection and run ./launch.sh again."
    printf '%s\n' "$wanted" >"$stamp"
}

ensure_chromium() {
    if [ -x "$CHROMIUM" ]; then
        return 0
    fi
    [ "$CHROMIUM" = /usr/bin/chromium ] ||
        die "LORAID_CHROMIUM points at $CHROMIUM, which is not an executable file; fix the path or unset it."
    command -v apt-get >/dev/null 2>&1 ||
        die "the browser tests need Chromium at /usr/bin/chromium; install it, or set LORAID_CHROMIUM to a Chromium/Chrome executable."
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
            die "the browser tests need Chromium; run 'apt-get install chromium' as root (sudo is not available)."
        sudo=(sudo)
    fi
    say "Installing Chromium for the browser tests (apt-get) ..."
    ${sudo[@]+"${sudo[@]}"} apt-get update &&
        ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium ||
        die "could not install Chromium with apt-get; install it by hand or set LORAID_CHROMIUM to a Chromium/Chrome executable."
    [ -x "$CHROMIUM" ] || die "apt-get finished but /usr/bin/chromium is still missing; install Chromium by hand."
}

ensure_venv
install_requirements requirements.txt

if [ "${1:-}" = "test" ]; then
    shift
    install_requirements requirements-test.txt
    ensure_chromium
    exec "$VENV_PY" -m pytest "$@"
fi

exec "$VENV_PY" "$ROOT/app.py" "$@"
