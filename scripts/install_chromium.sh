#!/usr/bin/env bash
# Install Debian's `chromium` for the app's browser test (tests/test_app.py) when it is missing.
#
# Idempotent and quiet. It never fails the calling run: without apt-get, root (or
# passwordless sudo) or a reachable package mirror it prints one line saying why, and the
# browser test then skips with the reason. Playwright drives this system browser through
# `executable_path`, so no browser is downloaded by Playwright itself.
set -u

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get here; the app's browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_chromium: not root and no passwordless sudo; run 'apt-get install chromium' as root to enable the browser test" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
LOG="${TMPDIR:-/tmp}/stl_bench_install_chromium.log"
# Try without refreshing the package lists first (fast when they are current).
if ! $SUDO apt-get install -y -q chromium >"$LOG" 2>&1; then
    if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; } >>"$LOG" 2>&1; then
        echo "install_chromium: apt-get could not install chromium (log: $LOG); the app's browser test will be skipped" >&2
    fi
fi
exit 0
