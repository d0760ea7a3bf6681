# qvl — common tasks. `make help` lists them.
GO ?= go
BIN ?= bin
NVCC ?= nvcc
KERNELS := $(wildcard kernels/*.cu)
PTX := $(KERNELS:.cu=.ptx)
PDL_PTX := $(patsubst kernels/%.cu,kernels/pdl/%.ptx,$(KERNELS))

.PHONY: help build test vet run bench kernels check-kernels kernel-resources gpu-binaries gpu-preflight gpu-check perf-page perf clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/qvl
	$(GO) build -o $(BIN)/qvl ./cmd/qvl

test: ## run the tests (the README's test command)
	$(GO) test ./...

vet: ## go vet
	$(GO) vet ./...

run: build ## serve the built-in demo model on the CPU at 127.0.0.1:8000
	$(BIN)/qvl serve

bench: ## Go benchmarks of the engine and the CPU kernels
	$(GO) test -run '^$$' -bench . -benchtime 3x ./runtime/...

kernels: $(PTX) $(PDL_PTX) ## rebuild the PTX of kernels/*.cu with nvcc (and the sm_90 PDL build, kernels/pdl/)

kernels/%.ptx: kernels/%.cu kernels/*.cuh
	$(NVCC) -ptx -arch=compute_80 -O3 -std=c++17 -o $@ $<

# The programmatic-dependent-launch build (QVL_CUDA_PDL=1): griddepcontrol needs compute_90.
kernels/pdl/%.ptx: kernels/%.cu kernels/*.cuh
	@mkdir -p kernels/pdl
	$(NVCC) -ptx -arch=compute_90 -O3 -std=c++17 -DQVL_PDL -o $@ $<

check-kernels: ## rebuild the PTX and fail if it differs from the committed PTX
	$(MAKE) -B kernels && git diff --exit-code -- kernels/*.ptx kernels/pdl/*.ptx && \
		test -z "$$(git status --porcelain --untracked-files=all -- kernels/pdl)"

kernel-resources: ## registers, shared memory, stack and spills of every kernel (ptxas -arch=sm_90), as a markdown table
	scripts/kernel-resources.sh

gpu-binaries: ## build build/gpu/ (qvl and GPU test binaries, stripped to travel light) for scripts/gpu-check.sh
	mkdir -p build/gpu
	$(GO) build -ldflags='-s -w' -o build/gpu/qvl ./cmd/qvl
	$(GO) test -c -ldflags='-s -w' -o build/gpu/cuda.test ./runtime/cuda
	$(GO) test -c -ldflags='-s -w' -o build/gpu/cudab.test ./bindings/cuda
	$(GO) test -c -ldflags='-s -w' -o build/gpu/cublasb.test ./bindings/cublas
	git describe --always --dirty > build/gpu/COMMIT 2>/dev/null || echo unknown > build/gpu/COMMIT
	tar -C build -czf build/gpu.tar.gz gpu

gpu-preflight: ## the GPU halves of runtime/cuda's tests, at their GPU sizes, on the CPU emulation (QVL_SIM_AS_GPU=1; ~5 min on 2 cores): before spending device time
	cd runtime/cuda && QVL_SIM_AS_GPU=1 QVL_SKIP_SIM=1 $(GO) test -count=1 -timeout 30m -skip 'TestGPUAttentionShapes|TestGPUEmbedShapes|TestGPUSampleShapes|TestGPUGemmShapes|TestGPUSynth2B' .

gpu-check: gpu-binaries ## run every GPU check (on a machine with a GPU; logs in build/gpu-check)
	scripts/gpu-check.sh build/gpu-check

perf-page: ## regenerate docs/performance.md from the result files in docs/perf/
	$(GO) run ./cmd/qvl bench report --results docs/perf --out docs/performance.md

perf: ## run the benchmark suite (minutes), then regenerate docs/performance.md
	scripts/perf-page.sh

clean:
	rm -rf $(BIN) build
