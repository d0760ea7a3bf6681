# qvl — common tasks. `make help` lists them.
GO ?= go
BIN ?= bin
NVCC ?= nvcc
KERNELS := $(wildcard kernels/*.cu)
PTX := $(KERNELS:.cu=.ptx)

.PHONY: help build test vet run bench kernels check-kernels gpu-binaries clean

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

kernels: $(PTX) ## rebuild the PTX of kernels/*.cu with nvcc

kernels/%.ptx: kernels/%.cu kernels/*.cuh
	$(NVCC) -ptx -arch=compute_80 -O3 -std=c++17 -o $@ $<

clean:
	rm -rf $(BIN)
