package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/qvl-dev/qvl/runtime/cuda"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Environment variables of the CUDA backend.
const (
	// envCUDADevice selects the GPU ordinal (default 0).
	envCUDADevice = "QVL_CUDA_DEVICE"
	// envCUDAGraphs set to 0 makes decode steps run op by op instead of as recorded CUDA graphs.
	envCUDAGraphs = "QVL_CUDA_GRAPHS"
)

// openCUDA opens the CUDA backend on GPU 0 (or $QVL_CUDA_DEVICE). Without a usable GPU it
// returns an error that says why (no driver library, a cuInit error such as
// CUDA_ERROR_NO_DEVICE, no cuBLAS), which openBackend logs once before falling back to the CPU
// for --backend auto.
func openCUDA() (ml.Backend, error) {
	dev := 0
	if s := os.Getenv(envCUDADevice); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%q is not a GPU ordinal", envCUDADevice, s)
		}
		dev = n
	}
	if err := cuda.Available(); err != nil {
		return nil, err
	}
	b, err := cuda.Open(cuda.Options{Device: dev})
	if err != nil {
		return nil, err
	}
	if os.Getenv(envCUDAGraphs) == "0" {
		return cuda.WithoutGraphs(b), nil
	}
	return b, nil
}
