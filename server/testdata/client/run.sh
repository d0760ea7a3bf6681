#!/usr/bin/env bash
# Real-client test of `qvl serve`: builds qvl, serves the built-in demo model (with its demo
# catalog) on a free loopback port with a fresh QVL_CACHE_DIR, drives it with the official openai
# npm package (client.mjs, pinned by package-lock.json), then sends SIGTERM while a stream is in
# flight and checks that the stream finishes and the server exits 0.
#
#   server/testdata/client/run.sh        (needs go, node ≥ 20 and npm)
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "client test: $*" >&2
  echo "--- qvl serve stdout" >&2; cat "$tmp/serve.out" >&2 || true
  echo "--- qvl serve stderr" >&2; tail -n 50 "$tmp/serve.err" >&2 || true
  exit 1
}

echo "== building qvl"
(cd "$root" && go build -o "$tmp/qvl" ./cmd/qvl)
echo "== installing the openai client (package-lock.json)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

port=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
url="http://127.0.0.1:$port"
echo "== qvl serve on $url"
QVL_CACHE_DIR="$tmp/cache" "$tmp/qvl" serve --addr "127.0.0.1:$port" >"$tmp/serve.out" 2>"$tmp/serve.err" &
pid=$!
health() { node -e 'fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' "$url/health"; }
for _ in $(seq 1 600); do
  if health; then break; fi
  kill -0 "$pid" 2>/dev/null || fail "qvl serve exited before it was ready"
  sleep 0.2
done
health || fail "qvl serve did not become healthy in 120 s"
grep -q '{"type": "image_ref", "image_ref": {"id": "demo-7"}}' "$tmp/serve.out" || fail "the ready message has no curl with demo-7"

echo "== openai client checks"
QVL_URL="$url" node "$here/client.mjs" || fail "client checks failed"

echo "== SIGTERM drains a stream in flight"
QVL_URL="$url" node "$here/client.mjs" drain >"$tmp/drain.out" 2>&1 &
client=$!
for _ in $(seq 1 300); do
  grep -q started "$tmp/drain.out" && break
  kill -0 "$client" 2>/dev/null || break
  sleep 0.1
done
grep -q started "$tmp/drain.out" || { cat "$tmp/drain.out" >&2; fail "the drain stream did not start"; }
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
crc=0
wait "$client" || crc=$?
cat "$tmp/drain.out"
[ "$crc" -eq 0 ] || fail "the stream in flight did not finish cleanly"
[ "$rc" -eq 0 ] || fail "qvl serve exited with $rc after SIGTERM, want 0"
echo "client test passed"
