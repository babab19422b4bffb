#!/usr/bin/env bash
# Prints the path of a pre-commit executable (https://pre-commit.com) for tests/e2e_check_gitops.rs.
# Uses .cache/pre-commit/bin/pre-commit when it is there; otherwise creates that virtualenv with
# python3 and installs pre-commit from PyPI into it (pip, the ordinary client). Fails loudly when
# nothing usable can be had: the test must not be skipped silently.
#
#   e2e/tools/pre-commit.sh       prints e.g. /work/main/.cache/pre-commit/bin/pre-commit
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.cache/pre-commit"
version="${PRE_COMMIT_VERSION:-4.3.0}"

log() { printf '[pre-commit] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bin="$venv/bin/pre-commit"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  printf '%s\n' "$bin"
  exit 0
fi
python=$(command -v python3 || true)
[ -n "$python" ] || die "python3 is needed to install pre-commit (apt-get install python3 python3-venv)"
log "creating a virtualenv in $venv and installing pre-commit $version from PyPI"
rm -rf "$venv"
"$python" -m venv "$venv" >&2 || die "python3 -m venv failed (install python3-venv)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pre-commit==$version" >&2 \
  || die "pip install pre-commit==$version failed"
"$bin" --version >&2 || die "pre-commit was installed but does not run"
printf '%s\n' "$bin"
