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

WORKFLOWS=(.github/workflows/*.yml)
echo "deploy-lint: check-jsonschema (GitHub workflow schema) ${WORKFLOWS[*]}"
"$BIN/check-jsonschema" --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}"

echo "deploy-lint: actionlint (with shellcheck on every run: block)"
"$BIN/actionlint" -shellcheck "$BIN/shellcheck" "${WORKFLOWS[@]}"

echo "deploy-lint: zizmor --offline (pedantic persona: every audit, every severity)"
"$BIN/zizmor" --offline --persona pedantic --min-severity informational --min-confidence low --no-progress .github/workflows

echo "deploy-lint: done"
