package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The CPU emulation of the kernels (testdata/sim): kernels/*.cu compiled with the system C++
// compiler against qvl_sim.h into a shared library, loaded with purego, behind the same device
// interface as the GPU. It lets the op harness check the kernels' logic and the backend's own
// code (dispatch, argument packing, scratch management, graphs) on machines without a GPU.
// The library is cached by the hash of its sources in the user cache directory.

type simLib struct {
	launch   func(name string, gx, gy, gz, bx, by, bz, smem uint32, vals unsafe.Pointer, n int32, errbuf unsafe.Pointer, errlen int32) int32
	alloc    func(bytes uint64) uint64
	free     func(p uint64)
	htod     func(dst uint64, src unsafe.Pointer, n uint64)
	dtoh     func(dst unsafe.Pointer, src uint64, n uint64)
	memset32 func(dst uint64, v uint32, n uint64)
	linear   func(m, n, k, bf16 int32, x, w, y uint64)
	kcount   func() int32
	kname    func(i int32) string
	schedule func(mode int32, seed uint64) int32
}

var (
	simOnce sync.Once
	simL    *simLib
	simErr  error
	simSkip string
)

// repoRoot is the module root, two levels above this package.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return filepath.Abs(filepath.Join(wd, "..", ".."))
}

// loadSim builds (or finds in the cache) and loads the emulation library. skip is set, with
// err nil, when this machine cannot build it (no C++ compiler).
func loadSim() (lib *simLib, skip string, err error) {
	simOnce.Do(func() { simL, simSkip, simErr = buildAndLoadSim() })
	return simL, simSkip, simErr
}

func buildAndLoadSim() (*simLib, string, error) {
	cxx := os.Getenv("CXX")
	if cxx == "" {
		cxx = "g++"
	}
	if _, err := exec.LookPath(cxx); err != nil {
		return nil, fmt.Sprintf("no C++ compiler (%s) to build the kernel emulation: %v", cxx, err), nil
	}
	root, err := repoRoot()
	if err != nil {
		return nil, "", err
	}
	kdir := filepath.Join(root, "kernels")
	sdir := filepath.Join(root, "runtime", "cuda", "testdata", "sim")
	var files []string
	for _, pat := range []string{filepath.Join(kdir, "*.cu"), filepath.Join(kdir, "*.cuh"), filepath.Join(sdir, "*.h"), filepath.Join(sdir, "*.cc")} {
		m, err := filepath.Glob(pat)
		if err != nil {
			return nil, "", err
		}
		files = append(files, m...)
	}
	sort.Strings(files)
	flags := []string{"-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-fPIC", "-shared", "-DQVL_SIM", "-Wall", "-Wno-unknown-pragmas", "-I", kdir, "-I", sdir}
	h := sha256.New()
	fmt.Fprintln(h, cxx, flags)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintln(h, filepath.Base(f), len(b))
		h.Write(b)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "qvl-sim")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	out := filepath.Join(dir, "qvlsim-"+hex.EncodeToString(h.Sum(nil))[:20]+".so")
	if _, err := os.Stat(out); err != nil {
		tmp := out + fmt.Sprintf(".%d.tmp", os.Getpid())
		args := append(append([]string{}, flags...), "-o", tmp, filepath.Join(sdir, "sim.cc"), filepath.Join(sdir, "kernels.cc"), "-lpthread")
		cmd := exec.Command(cxx, args...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("building the kernel emulation: %v\n%s", err, msg)
		}
		if err := os.Rename(tmp, out); err != nil {
			return nil, "", err
		}
	}
	handle, err := purego.Dlopen(out, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, "", fmt.Errorf("loading %s: %w", out, err)
	}
	l := &simLib{}
	for name, fp := range map[string]any{
		"qvlsim_launch": &l.launch, "qvlsim_alloc": &l.alloc, "qvlsim_free": &l.free, "qvlsim_htod": &l.htod,
		"qvlsim_dtoh": &l.dtoh, "qvlsim_memset32": &l.memset32, "qvlsim_linear": &l.linear,
		"qvlsim_kernel_count": &l.kcount, "qvlsim_kernel_name": &l.kname, "qvlsim_set_schedule": &l.schedule,
	} {
		purego.RegisterLibFunc(fp, handle, name)
	}
	mode, seed, err := parseSimSchedule(os.Getenv("QVL_SIM_SCHEDULE"))
	if err != nil {
		return nil, "", err
	}
	if l.schedule(mode, seed) != 0 {
		return nil, "", fmt.Errorf("the emulation refused schedule mode %d", mode)
	}
	return l, "", nil
}

// parseSimSchedule reads QVL_SIM_SCHEDULE: the order in which the emulation runs a block's
// threads between synchronisation points and a grid's blocks. "" or "forward" is index order;
// "reverse" runs them last to first; "shuffle" or "shuffle:SEED" draws a new order for every
// round and launch. A kernel whose output changes with the schedule has a race (shared memory
// read and written by different threads with no barrier between, lanes assumed to run in
// step, blocks assumed to run in order); CI runs the package under all three.
func parseSimSchedule(v string) (mode int32, seed uint64, err error) {
	switch name, arg, hasArg := strings.Cut(v, ":"); {
	case v == "" || v == "forward":
		return 0, 0, nil
	case v == "reverse":
		return 1, 0, nil
	case name == "shuffle":
		seed = 1
		if hasArg {
			if seed, err = strconv.ParseUint(arg, 10, 64); err != nil {
				return 0, 0, fmt.Errorf("QVL_SIM_SCHEDULE=%q: the shuffle seed is not an unsigned integer", v)
			}
		}
		return 2, seed, nil
	}
	return 0, 0, fmt.Errorf("QVL_SIM_SCHEDULE=%q: want forward, reverse, shuffle or shuffle:SEED", v)
}

// kernels returns the names the emulation registered.
func (l *simLib) kernels() []string {
	n := int(l.kcount())
	out := make([]string, n)
	for i := range out {
		out[i] = l.kname(int32(i))
	}
	return out
}

// simDevice implements device over the emulation. Work runs synchronously at launch, so
// sync is a no-op and events are wall-clock times.
type simDevice struct {
	lib *simLib
	sms int
	// smemOptin is the emulated opt-in shared memory a block (the H100's 227 KiB by default).
	smemOptin int
	flags     uintptr
	events    map[uintptr]time.Time
	nextEv    uintptr
	live      map[uintptr]int
	// capture, when non-nil, records operations instead of running them (graph capture).
	capture *[]func() error
	graphs  map[uintptr][]func() error
}

func newSimDevice(lib *simLib, sms int) *simDevice {
	d := &simDevice{lib: lib, sms: sms, smemOptin: 227 << 10, events: map[uintptr]time.Time{}, live: map[uintptr]int{},
		graphs: map[uintptr][]func() error{}}
	d.flags = uintptr(lib.alloc(4 * errFlagCount))
	lib.memset32(uint64(d.flags), 0, errFlagCount)
	return d
}

func (d *simDevice) info() devInfo {
	// One persistent block: the emulation runs a grid's blocks one after another, so a
	// grid-wide barrier can only be met by a grid of one block.
	return devInfo{name: "cuda-sim (CPU emulation of the kernels)", sms: d.sms, persistent: 1, smemOptin: d.smemOptin}
}

func (d *simDevice) do(fn func() error) error { return fn() }

func (d *simDevice) alloc(bytes int) (uintptr, error) {
	if bytes <= 0 {
		return 0, fmt.Errorf("sim: alloc of %d bytes", bytes)
	}
	p := uintptr(d.lib.alloc(uint64(bytes)))
	if p == 0 {
		return 0, errors.New("sim: out of memory")
	}
	d.live[p] = bytes
	return p, nil
}

func (d *simDevice) free(p uintptr) error {
	if d.capture != nil {
		return errors.New("sim: free during graph capture")
	}
	if _, ok := d.live[p]; !ok {
		return fmt.Errorf("sim: free of %#x, which is not allocated", p)
	}
	delete(d.live, p)
	d.lib.free(uint64(p))
	return nil
}

// checkRange reports an access outside every live allocation (the emulation's memcheck for
// the host-side copies; kernels are not checked).
func (d *simDevice) checkRange(p uintptr, n int) error {
	for base, size := range d.live {
		if p >= base && p+uintptr(n) <= base+uintptr(size) {
			return nil
		}
	}
	if p >= d.flags && p+uintptr(n) <= d.flags+4*errFlagCount {
		return nil
	}
	return fmt.Errorf("sim: %d bytes at %#x are outside every allocation", n, p)
}

func (d *simDevice) run(op func() error) error {
	if d.capture != nil {
		*d.capture = append(*d.capture, op)
		return nil
	}
	return op()
}

func (d *simDevice) upload(dst uintptr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	if err := d.checkRange(dst, len(src)); err != nil {
		return err
	}
	if d.capture != nil {
		return errors.New("sim: upload during graph capture")
	}
	d.lib.htod(uint64(dst), unsafe.Pointer(&src[0]), uint64(len(src)))
	return nil
}

func (d *simDevice) download(dst []byte, src uintptr) error {
	if d.capture != nil {
		return errors.New("sim: download during graph capture")
	}
	if len(dst) == 0 {
		return nil
	}
	if err := d.checkRange(src, len(dst)); err != nil {
		return err
	}
	d.lib.dtoh(unsafe.Pointer(&dst[0]), uint64(src), uint64(len(dst)))
	return nil
}

func (d *simDevice) memset32(dst uintptr, v uint32, n int) error {
	if n == 0 {
		return nil
	}
	if err := d.checkRange(dst, 4*n); err != nil {
		return err
	}
	return d.run(func() error { d.lib.memset32(uint64(dst), v, uint64(n)); return nil })
}

func (d *simDevice) launch(k kernelID, grid, block dim3, smem int, a *kargs) error {
	name := kernelTable[k].name
	vals := a.vals // copied: a graph replays the values of capture time
	n := a.n
	return d.run(func() error {
		var msg [512]byte
		r := d.lib.launch(name, uint32(grid.x), uint32(grid.y), uint32(grid.z), uint32(block.x), uint32(block.y), uint32(block.z),
			uint32(smem), unsafe.Pointer(&vals[0]), int32(n), unsafe.Pointer(&msg[0]), int32(len(msg)))
		if r != 0 {
			end := 0
			for end < len(msg) && msg[end] != 0 {
				end++
			}
			return fmt.Errorf("sim launch %s grid %v block %v: %s", name, grid, block, msg[:end])
		}
		return nil
	})
}

func (d *simDevice) linear(m, n, k int, bf16 bool, x, w, y uintptr) error {
	flag := int32(0)
	if bf16 {
		flag = 1
	}
	return d.run(func() error {
		d.lib.linear(int32(m), int32(n), int32(k), flag, uint64(x), uint64(w), uint64(y))
		return nil
	})
}

func (d *simDevice) sync() error {
	if d.capture != nil {
		return errors.New("sim: sync during graph capture")
	}
	return nil
}

func (d *simDevice) beginCapture() error {
	if d.capture != nil {
		return errors.New("sim: capture already running")
	}
	d.capture = &[]func() error{}
	return nil
}

func (d *simDevice) endCapture(abort bool) (uintptr, error) {
	ops := *d.capture
	d.capture = nil
	if abort {
		return 0, nil
	}
	d.nextEv++
	d.graphs[d.nextEv] = ops
	return d.nextEv, nil
}

func (d *simDevice) launchGraph(g uintptr) error {
	ops, ok := d.graphs[g]
	if !ok {
		return fmt.Errorf("sim: no graph %d", g)
	}
	for _, op := range ops {
		if err := op(); err != nil {
			return err
		}
	}
	return nil
}

func (d *simDevice) destroyGraph(g uintptr) { delete(d.graphs, g) }

func (d *simDevice) errFlags() uintptr { return d.flags }

func (d *simDevice) takeErrors() ([]uint32, error) {
	var f [errFlagCount]uint32
	d.lib.dtoh(unsafe.Pointer(&f[0]), uint64(d.flags), 4*errFlagCount)
	var out []uint32
	for i, v := range f {
		if v != 0 {
			out = append(out, uint32(i))
		}
	}
	if len(out) > 0 {
		d.lib.memset32(uint64(d.flags), 0, errFlagCount)
	}
	return out, nil
}

func (d *simDevice) newEvent() (uintptr, error) {
	d.nextEv++
	return d.nextEv, nil
}

func (d *simDevice) record(ev uintptr) error {
	return d.run(func() error { d.events[ev] = time.Now(); return nil })
}

func (d *simDevice) elapsed(start, end uintptr) (time.Duration, error) {
	a, ok1 := d.events[start]
	b, ok2 := d.events[end]
	if !ok1 || !ok2 {
		return 0, errors.New("sim: event not recorded")
	}
	return b.Sub(a), nil
}

func (d *simDevice) destroyEvent(ev uintptr) { delete(d.events, ev) }

func (d *simDevice) close() error {
	d.lib.free(uint64(d.flags))
	for p := range d.live {
		d.lib.free(uint64(p))
	}
	d.live = nil
	return nil
}
