#!/usr/bin/env bash
# Set everything up (.venv, espeak-ng) and run the demo on the built-in av-digits data.
# Idempotent: a second run reuses the installed packages, the built data and the stores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/ibdc demo --out demo-out "$@"
