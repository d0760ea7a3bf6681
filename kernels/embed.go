// Package kernels holds qvl's CUDA kernels as PTX, built from the .cu files beside it by
// `make kernels` (nvcc -ptx -arch=compute_80, and a compute_90 build for programmatic dependent
// launch in pdl/) and embedded in the binary; the driver compiles the PTX for the GPU it finds
// when the CUDA backend loads it. See README.md for what each kernel computes, its launch
// shape and its floor.
package kernels

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

//go:embed *.ptx pdl/*.ptx
var ptx embed.FS

// Module is one PTX file: the kernels of one op family.
type Module struct {
	// Name is the file's base name without .ptx ("attention", "norm", ...).
	Name string
	// PTX is the file's text.
	PTX []byte
}

// Modules returns every embedded PTX module, sorted by name.
func Modules() ([]Module, error) { return modules("*.ptx") }

// modules reads the embedded PTX files that match pattern, sorted by name.
func modules(pattern string) ([]Module, error) {
	names, err := fs.Glob(ptx, pattern)
	if err != nil {
		return nil, fmt.Errorf("kernels: listing the embedded PTX: %w", err)
	}
	sort.Strings(names)
	out := make([]Module, 0, len(names))
	for _, n := range names {
		b, err := ptx.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("kernels: reading embedded %s: %w", n, err)
		}
		out = append(out, Module{Name: strings.TrimSuffix(path.Base(n), ".ptx"), PTX: b})
	}
	return out, nil
}

// Param is the PTX type of one kernel parameter: ".u64" for pointers and 64-bit integers,
// ".u32" for int and unsigned, ".f32" for float.
type Param string

// Entry is a kernel (a .entry) of a PTX module.
type Entry struct {
	// Name is the kernel's extern "C" name.
	Name string
	// Params are its parameter types in order.
	Params []Param
}

// Entries parses the .entry declarations of a PTX text: each kernel's name and the types of
// its parameters, in order.
func Entries(text []byte) ([]Entry, error) {
	var out []Entry
	s := string(text)
	for {
		i := strings.Index(s, ".entry ")
		if i < 0 {
			return out, nil
		}
		s = s[i+len(".entry "):]
		open := strings.IndexByte(s, '(')
		end := strings.IndexByte(s, ')')
		if open < 0 || end < open {
			return nil, fmt.Errorf("kernels: malformed .entry near %q", head(s))
		}
		e := Entry{Name: strings.TrimSpace(s[:open])}
		for _, line := range strings.Split(s[open+1:end], ",") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			if len(f) < 3 || f[0] != ".param" {
				return nil, fmt.Errorf("kernels: entry %s: unexpected parameter %q", e.Name, strings.TrimSpace(line))
			}
			e.Params = append(e.Params, Param(f[1]))
		}
		out = append(out, e)
		s = s[end:]
	}
}

func head(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}
