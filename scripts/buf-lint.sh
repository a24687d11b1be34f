#!/usr/bin/env bash
# buf lint over proto/ (rules in proto/buf.yaml), with buf from the npm registry.
set -euo pipefail
BUF_VERSION=1.75.0
if ! command -v npx >/dev/null 2>&1; then
    echo "buf-lint: npx not found; installing nodejs and npm with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
cd "$(dirname "$0")/../proto"
npx --yes "@bufbuild/buf@${BUF_VERSION}" lint . 2> >(grep -v 'npm warn' >&2)
echo "buf lint: $(find . -name '*.proto' | wc -l) proto file(s) clean"
