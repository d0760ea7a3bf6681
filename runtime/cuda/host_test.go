package cuda

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/stretchr/testify/require"
)

// nullDevice is a device that does nothing: memory is address space only, launches, GEMMs,
// copies and graphs return at once, reads give zeros. Over it the backend and the model run
// only their host side, so a benchmark times the host's share of a step — the part of a
// decode step during which, on a GPU, the device waits for the host (uploads, the graph
// launch, the sampler's call and the token read).
type nullDevice struct {
	next   uintptr
	events uintptr
	flags  uintptr
}

func newNullDevice() *nullDevice { return &nullDevice{next: 1 << 30} }

func (d *nullDevice) info() devInfo {
	return devInfo{name: "null (host side only)", sms: 132, persistent: 132, smemOptin: 227 << 10}
}
func (d *nullDevice) do(fn func() error) error { return fn() }
func (d *nullDevice) alloc(bytes int) (uintptr, error) {
	p := d.next
	d.next += uintptr((bytes + 255) &^ 255)
	return p, nil
}
func (d *nullDevice) free(uintptr) error                             { return nil }
func (d *nullDevice) upload(uintptr, []byte) error                   { return nil }
func (d *nullDevice) download(dst []byte, _ uintptr) error           { clear(dst); return nil }
func (d *nullDevice) memset32(uintptr, uint32, int) error            { return nil }
func (d *nullDevice) launch(kernelID, dim3, dim3, int, *kargs) error { return nil }
func (d *nullDevice) linear(int, int, int, bool, uintptr, uintptr, uintptr) error {
	return nil
}
func (d *nullDevice) sync() error { return nil }
func (d *nullDevice) errFlags() uintptr {
	if d.flags == 0 {
		d.flags, _ = d.alloc(4 * errFlagCount)
	}
	return d.flags
}
func (d *nullDevice) takeErrors() ([]uint32, error)                   { return nil, nil }
func (d *nullDevice) beginCapture() error                             { return nil }
func (d *nullDevice) endCapture(bool) (uintptr, error)                { d.events++; return d.events, nil }
func (d *nullDevice) launchGraph(uintptr) error                       { return nil }
func (d *nullDevice) destroyGraph(uintptr)                            {}
func (d *nullDevice) newEvent() (uintptr, error)                      { d.events++; return d.events, nil }
func (d *nullDevice) record(uintptr) error                            { return nil }
func (d *nullDevice) elapsed(uintptr, uintptr) (time.Duration, error) { return 0, nil }
func (d *nullDevice) destroyEvent(uintptr)                            {}
func (d *nullDevice) close() error                                    { return nil }

var _ device = (*nullDevice)(nil)

// BenchmarkHostDecodeStep times the host side of one decode step with graphs and device
// sampling (model.ForwardSample over the CUDA backend on nullDevice) at batch 1 and 64,
// context ~512, on the tiny synthetic model (with graphs the host's work does not depend on
// the layer count). On a GPU the device idles for about this long every step, unless the host
// prepares the next step while the current one runs.
func BenchmarkHostDecodeStep(b *testing.B) {
	bk, err := newBackend(newNullDevice())
	require.NoError(b, err)
	defer bk.Close()
	shape := synth.Shapes["tiny"]
	dir := filepath.Join(b.TempDir(), "tiny")
	require.NoError(b, synth.Write(dir, shape, synth.Options{Seed: 3}))
	const bs, ctx = 16, 512
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch%d", batch), func(b *testing.B) {
			m, err := model.Open(bk, dir, model.Options{})
			require.NoError(b, err)
			defer m.Close()
			perSeq := (ctx + b.N + 64 + bs - 1) / bs
			require.NoError(b, m.InitCache(batch*perSeq, bs))
			r := rand.New(rand.NewPCG(1, 2))
			seqs := make([]*seqState, batch)
			for i := range seqs {
				seqs[i] = &seqState{n: ctx}
				for j := 0; j < perSeq; j++ {
					seqs[i].blocks = append(seqs[i].blocks, int32(i*perSeq+j))
				}
			}
			params := make([]ml.SampleParams, batch)
			step := func() {
				_, err := m.ForwardSample(textBatch(r, seqs, 1, bs), params)
				require.NoError(b, err)
			}
			for i := 0; i < 4; i++ { // capture the graph
				step()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.StopTimer()
			captures, replays := m.GraphStats()
			require.Positive(b, replays, "the steps must replay a graph (captures %d)", captures)
		})
	}
}
