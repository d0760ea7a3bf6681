#!/usr/bin/env bash
# Runs qvl's benchmark suite and regenerates docs/performance.md from its results.
#
#   scripts/perf-page.sh            run the suite (minutes), then write the page
#   scripts/perf-page.sh --page     only regenerate the page from docs/perf/*.json (what `make perf-page` does)
#
# The suite writes into docs/perf/ (override with PERF_DIR):
#   1. `qvl bench offline` of each shape in PERF_SHAPES (synthesized once under $QVL_CACHE_DIR) on
#      PERF_BACKEND: decode tokens/s at PERF_BATCH beside the floor, prefill PERF_PREFILL;
#   2. `qvl bench serve` against the built-in demo server (`qvl serve`, started here on a free
#      loopback port) at the request rates PERF_RATES, one result file per rate and a sweep plot.
# Results of earlier runs stay in docs/perf/ until removed; the page lists every file there.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
PERF_DIR=${PERF_DIR:-docs/perf}
PAGE=${PAGE:-docs/performance.md}
PERF_SHAPES=${PERF_SHAPES:-"tiny qwen3-vl-2b"}
PERF_BACKEND=${PERF_BACKEND:-cpu}
PERF_BATCH=${PERF_BATCH:-1,4,16}
PERF_CONTEXT=${PERF_CONTEXT:-256}
PERF_STEPS=${PERF_STEPS:-16}
PERF_PREFILL=${PERF_PREFILL:-1x256}
PERF_RATES=${PERF_RATES:-2,4,8,16}
PERF_PROMPTS=${PERF_PROMPTS:-64}

page() {
	"$GO" run ./cmd/qvl bench report --results "$PERF_DIR" --out "$PAGE"
}

if [[ "${1:-}" == "--page" ]]; then
	page
	exit 0
fi

mkdir -p "$PERF_DIR"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
"$GO" build -o "$bin/qvl" ./cmd/qvl
qvl="$bin/qvl"
stamp=$(date -u +%Y%m%d-%H%M%S)

for shape in $PERF_SHAPES; do
	echo "== qvl bench offline --shape $shape --backend $PERF_BACKEND"
	"$qvl" bench offline --shape "$shape" --backend "$PERF_BACKEND" --batch "$PERF_BATCH" --context "$PERF_CONTEXT" \
		--steps "$PERF_STEPS" --prefill "$PERF_PREFILL" \
		--result-json "$PERF_DIR/offline-$shape-$PERF_BACKEND-$stamp.json" \
		--profile "$PERF_DIR/offline-$shape-$PERF_BACKEND-$stamp.ops.pb.gz"
done

if "$qvl" serve -h >/dev/null 2>&1; then
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18000)
	echo "== qvl serve (demo) on 127.0.0.1:$port"
	"$qvl" serve --addr "127.0.0.1:$port" >"$bin/serve.log" 2>&1 &
	server=$!
	for _ in $(seq 600); do
		curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
		kill -0 "$server" 2>/dev/null || { cat "$bin/serve.log"; exit 1; }
		sleep 0.2
	done
	echo "== qvl bench serve --sweep-rates $PERF_RATES"
	"$qvl" bench serve --url "http://127.0.0.1:$port" --sweep-rates "$PERF_RATES" --num-prompts "$PERF_PROMPTS" \
		--random-input-len 256 --random-output-len 64 --image-ref-prob 0.5 --result-dir "$PERF_DIR" \
		--profile "$PERF_DIR/serve-$stamp" --metadata "server=qvl serve demo ($PERF_BACKEND)" || status=$?
	kill -TERM "$server"
	wait "$server" || true
	[[ -z "${status:-}" ]] || exit "$status"
else
	echo "== skipping bench serve: this qvl has no serve command yet"
fi

page
