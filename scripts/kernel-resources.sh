#!/usr/bin/env bash
# kernel-resources.sh [PTXDIR] — the resource report of every kernel in the committed PTX
# (kernels/*.ptx, or PTXDIR/*.ptx: kernels/pdl for the PDL build), assembled for the H100 with
# the toolkit's ptxas (`ptxas -arch=sm_90 -O3 -v`), as a markdown table: registers, static
# shared memory, stack and spills per kernel, sorted by name. The driver's own (newer) ptxas
# compiles the PTX on the GPU, so its counts may differ by a few registers.
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")/.." && pwd)/kernels}
ptxas=${PTXAS:-ptxas}
command -v "$ptxas" >/dev/null || { echo "kernel-resources: no $ptxas on PATH (the CUDA toolkit)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| kernel | registers | static smem (B) | stack (B) | spill st/ld (B) |"
echo "|---|---:|---:|---:|---:|"
for f in "$dir"/*.ptx; do
	"$ptxas" -arch=sm_90 -O3 -v "$f" -o "$tmp/k.cubin" 2>&1
done | awk '
	/Compiling entry function/ { n = $0; sub(/.*function '\''/, "", n); sub(/'\''.*/, "", n) }
	/bytes stack frame/ { stack = $1; st = $5; ld = $9 }
	/Used [0-9]+ registers/ {
		regs = $5; smem = 0
		for (i = 1; i <= NF; i++) if ($(i) ~ /^smem/) smem = $(i - 2)
		printf "| %s | %s | %s | %s | %s/%s |\n", n, regs, smem, stack, st, ld
	}' | sort
