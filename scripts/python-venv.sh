#!/usr/bin/env bash
# Ensures the Python virtualenv for the chart checks exists and is current; prints its
# python. Lives outside the checkout (like the cargo target dir) so clones share it.
set -euo pipefail
REQ="$(cd "$(dirname "$0")" && pwd)/requirements-charts.txt"
VENV="${PLATFORM_VENV:-$HOME/.cache/platform-venv}"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        echo "python-venv: installing python3-venv with apt-get" >&2
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
    echo "$want" > "$STAMP"
fi
echo "$VENV/bin/python"
