package main

import (
	"errors"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// openCUDA opens the CUDA backend on GPU 0.
func openCUDA() (ml.Backend, error) {
	return nil, errors.New("this build has no CUDA backend yet")
}
