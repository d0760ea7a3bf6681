#!/usr/bin/env bash
# check.sh: regenerates the chat-template fixtures into a temporary directory and compares them with
# the committed ones (../qwen3vl.jsonl, ../qwen3text.jsonl). Exits non-zero on any difference.
#
#   node + npm     render the cases with @huggingface/jinja (pinned in package-lock.json)
#   python3+jinja2 (optional) adds the Python Jinja2 annotations ("python" where it differs); without
#                  it those annotations are left out of the comparison, with a warning.
#
# To update the fixtures after changing gen.mjs or a template: node gen.mjs && python3 pyref.py ... (see
# the two pyref calls below, without --check and with the committed paths).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
cd "$here"
if [ ! -d node_modules/@huggingface/jinja ]; then
  npm ci --silent --no-audit --no-fund
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
node gen.mjs "$tmp" >/dev/null
templates=("qwen3vl.jsonl:$repo/loader/tokenizer/qwen3/chat_template.json" "qwen3text.jsonl:$repo/loader/tokenizer/qwen3/tokenizer_config.json")
status=0
if python3 -c 'import jinja2' 2>/dev/null; then
  for t in "${templates[@]}"; do
    python3 pyref.py "$tmp/${t%%:*}" "${t#*:}" >/dev/null
  done
  for t in "${templates[@]}"; do
    f="${t%%:*}"
    if ! diff -q "$tmp/$f" "$here/../$f" >/dev/null; then
      echo "check.sh: testdata/$f differs from a fresh render:" >&2
      diff "$tmp/$f" "$here/../$f" | head -c 4000 >&2 || true
      status=1
    fi
  done
else
  echo "check.sh: warning: python3 with jinja2 not found; comparing without the Python annotations" >&2
  for t in "${templates[@]}"; do
    f="${t%%:*}"
    if ! node strip.mjs "$tmp/$f" "$here/../$f"; then
      status=1
    fi
  done
fi
if [ "$status" -eq 0 ]; then
  echo "check.sh: fixtures match a fresh render"
fi
exit "$status"
