#!/usr/bin/env bash
# `make demo`: stops 1–2 on real data with the embedded model, in a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export LLMBUS_DB="${LLMBUS_DB:-out/demo.db}"
mkdir -p "$(dirname "$LLMBUS_DB")"
llmbus() { .venv/bin/llmbus "$@"; }
TASK=examples/sms_spam/task.yaml

echo
echo "── Stop 2 · prompt-driven development: the embedded Gemma 3 270M on ${DEMO_LIMIT:-200} SMS (8 nearest examples per item)"
echo "   The exact prompt of the first item (llmbus run --dry-run):"
llmbus run "$TASK" --dry-run | tail -n 7 | sed 's/^/   │ /'
llmbus run "$TASK" --model local:gemma-3-270m --limit "${DEMO_LIMIT:-200}" --concurrency 4

echo
echo "── Stop 1 · do you need an LLM? Size tier, cheap baselines on the same data and metric, and the LLM run"
llmbus advise "$TASK"

echo
echo "── What it costs at 1M SMS a month (llmbus runs --traffic 1000000)"
llmbus runs --task sms_spam --traffic 1000000
echo
echo "Call log: $LLMBUS_DB  ·  per-item rows: .venv/bin/llmbus show RUN_ID --db $LLMBUS_DB"
