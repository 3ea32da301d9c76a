#!/usr/bin/env bash
# Arize Phoenix, the OTLP receiver the telemetry test reads spans back from, in a venv of its own (it is
# ~860 MB with its own pins, so it never joins llmbus's dependencies). Cached per version under $LLMBUS_HOME;
# prints the venv's bin directory on its last line.
set -euo pipefail
VERSION="${PHOENIX_VERSION:-20.26.1}"
CACHE="${LLMBUS_HOME:-$HOME/.cache/llmbus}"
DEST="$CACHE/phoenix/$VERSION"
if [ -x "$DEST/bin/phoenix" ] && [ -f "$DEST/.installed" ]; then
  echo "$DEST/bin"; exit 0
fi
echo "installing arize-phoenix $VERSION into $DEST (about 1-2 minutes)" >&2
rm -rf "$DEST"
python3 -m venv "$DEST"
# pip's notes about package index folders that are not there say nothing about this install
"$DEST/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v "is ignored" || true; } >&2
"$DEST/bin/python" -m pip install --quiet "arize-phoenix==$VERSION" 2>&1 | { grep -v "is ignored" || true; } >&2
touch "$DEST/.installed"
echo "$DEST/bin"
