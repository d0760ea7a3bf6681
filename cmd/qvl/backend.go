package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// openBackend returns the backend named by the --backend flag: "cpu" (fast kernels where built
// in), "cpu-ref" (plain-Go reference), "cuda", or "auto" (CUDA when a GPU is usable, else the CPU).
func openBackend(name string, threads int) (ml.Backend, error) {
	switch strings.ToLower(name) {
	case "cpu":
		return cpu.New(cpu.Options{Threads: threads}), nil
	case "cpu-ref", "ref":
		return cpu.NewReference(), nil
	case "cuda", "gpu":
		return openCUDA()
	case "auto", "":
		b, err := openCUDA()
		if err == nil {
			return b, nil
		}
		slog.Info("no usable GPU, running on the CPU", "reason", err.Error())
		return cpu.New(cpu.Options{Threads: threads}), nil
	}
	return nil, fmt.Errorf("unknown backend %q (want auto, cpu, cpu-ref or cuda)", name)
}
