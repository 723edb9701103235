#!/usr/bin/env bash
# Install everything ibdc needs into .venv inside the checkout (idempotent; a second run takes a second).
#   system: espeak-ng (speaks the digit names of the benchmark data)
#   python: torch 2.14.1 / torchvision 0.29.1 / torchaudio 2.11.0 (the pinned stack that loads together),
#           then ibdc itself in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
  echo "installing espeak-ng (Debian package)..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=".venv/.ibdc-install-stamp"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "installing Python packages into .venv (first run: a few minutes)..." >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "torchaudio==2.11.0"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
