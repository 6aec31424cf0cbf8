#!/usr/bin/env bash
# Static analysis of terraform/ with checkov. checkov pins many libraries of its own, so it
# lives in a venv apart from the broker's (.venv-checkov at the repository root, made on
# first use). It only reads files: no provider, account or network is needed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
venv=${CHECKOV_VENV:-"$root/.venv-checkov"}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/checkov" ]; then
  echo "check.sh: installing checkov into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$root/requirements/checkov.txt"
fi

# --skip-download: no policy or guideline download from the vendor's platform (there is
# no network here, and the built-in checks are the ones we hold ourselves to).
start=$(date +%s)
status=0
"$venv/bin/checkov" \
  --directory "$here" \
  --framework terraform \
  --skip-download \
  --download-external-modules false \
  --compact \
  --quiet \
  "$@" || status=$?
echo "check.sh: checkov finished in $(($(date +%s) - start)) s with exit $status" >&2
exit "$status"
