package cublas

import (
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// Environment variables that, when set, are the only library paths tried.
// If only EnvLibCUBLAS is set, cuBLASLt is looked for beside it with the
// same suffix (libcublas.so.12 -> libcublasLt.so.12).
const (
	EnvLibCUBLAS   = "QVL_LIBCUBLAS"
	EnvLibCUBLASLt = "QVL_LIBCUBLASLT"
)

// Pair is one candidate (cuBLAS, cuBLASLt) pair of library names or paths.
// The two are always taken from the same version and directory, since
// libcublas.so.N needs libcublasLt.so.N.
type Pair struct {
	// BLAS is the libcublas name or path.
	BLAS string
	// Lt is the libcublasLt name or path.
	Lt string
}

// LibraryCandidates returns, in the order they are tried, the pairs that
// Available loads from: with overrides, only the override pair; otherwise
// sonames 13, 12, 11 and then the unversioned name, each first on the
// default loader path, then in the CUDA toolkit's target directory and its
// lib64.
func LibraryCandidates(blasOverride, ltOverride string) []Pair {
	if blasOverride != "" || ltOverride != "" {
		if ltOverride == "" {
			dir, base := path.Split(blasOverride)
			ltOverride = dir + strings.Replace(base, "libcublas", "libcublasLt", 1)
		}
		if blasOverride == "" {
			dir, base := path.Split(ltOverride)
			blasOverride = dir + strings.Replace(base, "libcublasLt", "libcublas", 1)
		}
		return []Pair{{BLAS: blasOverride, Lt: ltOverride}}
	}
	dirs := []string{"", "/usr/local/cuda/targets/" + targetDir(runtime.GOARCH) + "/lib/", "/usr/local/cuda/lib64/"}
	var out []Pair
	for _, suffix := range []string{".so.13", ".so.12", ".so.11", ".so"} {
		for _, d := range dirs {
			out = append(out, Pair{BLAS: d + "libcublas" + suffix, Lt: d + "libcublasLt" + suffix})
		}
	}
	return out
}

// targetDir returns the CUDA toolkit's per-architecture target directory.
func targetDir(goarch string) string {
	if goarch == "arm64" {
		return "sbsa-linux"
	}
	return "x86_64-linux"
}

type blasAPI struct {
	cublasCreate          uintptr
	cublasDestroy         uintptr
	cublasSetStream       uintptr
	cublasSetMathMode     uintptr
	cublasSetWorkspace    uintptr
	cublasSgemm           uintptr
	cublasGemmEx          uintptr
	cublasLtGetVersion    uintptr
	ltCreate              uintptr
	ltDestroy             uintptr
	ltMatmulDescCreate    uintptr
	ltMatmulDescSetAttr   uintptr
	ltMatmulDescDestroy   uintptr
	ltMatrixLayoutCreate  uintptr
	ltMatrixLayoutDestroy uintptr
	ltPrefCreate          uintptr
	ltPrefSetAttr         uintptr
	ltPrefDestroy         uintptr
	ltAlgoGetHeuristic    uintptr
	ltMatmul              uintptr
	ltAlgoCapGetAttr      uintptr
	ltAlgoConfigSetAttr   uintptr
	ltAlgoCheck           uintptr
}

type symbol struct {
	lib      int // 0 = cuBLAS, 1 = cuBLASLt
	name     string
	addr     *uintptr
	required bool
}

func (a *blasAPI) symbols() []symbol {
	return []symbol{
		{0, "cublasCreate_v2", &a.cublasCreate, true},
		{0, "cublasDestroy_v2", &a.cublasDestroy, true},
		{0, "cublasSetStream_v2", &a.cublasSetStream, true},
		{0, "cublasSetMathMode", &a.cublasSetMathMode, true},
		{0, "cublasSetWorkspace_v2", &a.cublasSetWorkspace, false}, // cuBLAS 11.4+
		{0, "cublasSgemm_v2", &a.cublasSgemm, true},
		{0, "cublasGemmEx", &a.cublasGemmEx, true},
		{1, "cublasLtGetVersion", &a.cublasLtGetVersion, true},
		{1, "cublasLtCreate", &a.ltCreate, true},
		{1, "cublasLtDestroy", &a.ltDestroy, true},
		{1, "cublasLtMatmulDescCreate", &a.ltMatmulDescCreate, true},
		{1, "cublasLtMatmulDescSetAttribute", &a.ltMatmulDescSetAttr, true},
		{1, "cublasLtMatmulDescDestroy", &a.ltMatmulDescDestroy, true},
		{1, "cublasLtMatrixLayoutCreate", &a.ltMatrixLayoutCreate, true},
		{1, "cublasLtMatrixLayoutDestroy", &a.ltMatrixLayoutDestroy, true},
		{1, "cublasLtMatmulPreferenceCreate", &a.ltPrefCreate, true},
		{1, "cublasLtMatmulPreferenceSetAttribute", &a.ltPrefSetAttr, true},
		{1, "cublasLtMatmulPreferenceDestroy", &a.ltPrefDestroy, true},
		{1, "cublasLtMatmulAlgoGetHeuristic", &a.ltAlgoGetHeuristic, true},
		{1, "cublasLtMatmul", &a.ltMatmul, true},
		{1, "cublasLtMatmulAlgoCapGetAttribute", &a.ltAlgoCapGetAttr, false},
		{1, "cublasLtMatmulAlgoConfigSetAttribute", &a.ltAlgoConfigSetAttr, false},
		{1, "cublasLtMatmulAlgoCheck", &a.ltAlgoCheck, false},
	}
}

var (
	api      blasAPI
	loadOnce sync.Once
	loadErr  error
	loaded   Pair
)

// openPair loads the Lt library first so that libcublas's dependency on it
// resolves to the same file, then libcublas, then resolves every symbol.
func openPair(p Pair) (*blasAPI, error) {
	lt, err := dl.Open([]string{p.Lt})
	if err != nil {
		return nil, err
	}
	blas, err := dl.Open([]string{p.BLAS})
	if err != nil {
		_ = lt.Close()
		return nil, err
	}
	libs := []*dl.Library{blas, lt}
	var a blasAPI
	for _, s := range a.symbols() {
		addr, err := libs[s.lib].Symbol(s.name)
		if err != nil {
			if s.required {
				_ = blas.Close()
				_ = lt.Close()
				return nil, err
			}
			continue
		}
		*s.addr = addr
	}
	return &a, nil
}

func loadFrom(pairs []Pair) (*blasAPI, Pair, error) {
	var reasons []string
	for _, p := range pairs {
		a, err := openPair(p)
		if err == nil {
			return a, p, nil
		}
		if errors.Is(err, dl.ErrUnsupported) {
			return nil, Pair{}, fmt.Errorf("cublas: %w", err)
		}
		reasons = append(reasons, fmt.Sprintf("%s + %s: %v", p.BLAS, p.Lt, err))
	}
	return nil, Pair{}, fmt.Errorf("cublas: no usable cuBLAS/cuBLASLt pair (set %s to libcublas's path if it is installed elsewhere): %s",
		EnvLibCUBLAS, strings.Join(reasons, "; "))
}

// Available loads cuBLAS and cuBLASLt once per process and returns nil if
// both are usable, else an error that lists what was tried. It does not
// touch the GPU: creating a Handle does.
func Available() error {
	loadOnce.Do(func() {
		a, p, err := loadFrom(LibraryCandidates(os.Getenv(EnvLibCUBLAS), os.Getenv(EnvLibCUBLASLt)))
		if err != nil {
			loadErr = err
			return
		}
		api = *a
		loaded = p
	})
	return loadErr
}

// Loaded returns the library pair that Available loaded (zero before).
func Loaded() Pair {
	if Available() != nil {
		return Pair{}
	}
	return loaded
}

// LtVersion returns cublasLtGetVersion(), e.g. 130100 for 13.1.0, or 0 when
// the library is not loaded.
func LtVersion() int {
	if Available() != nil {
		return 0
	}
	v, ok := dl.CallUintptr(api.cublasLtGetVersion)
	if !ok {
		return 0
	}
	return int(v)
}
