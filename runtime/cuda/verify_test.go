package cuda

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qvl-dev/qvl/runtime/verify"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logWriter sends verify's report lines to the test log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestVerifyGoldens runs the shared goldens (Hugging Face reference logits of a tiny Qwen3-VL:
// text, image embeddings with DeepStack, custom embeddings through the projector) through the
// engine on the CUDA backend: relative L2 error of the logits ≤ 2e-2, as `qvl verify --backend
// cuda` checks. The second run's small step budget forces chunked prefill over cached prefixes.
// Both run again with every opt-in switch on.
func TestVerifyGoldens(t *testing.T) {
	root, err := repoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "testdata", "goldens", "qwen3vl-tiny-a")
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		skipShortSim(t, gpu)
		run := func(t *testing.T) {
			for _, budget := range []int{0, 8} {
				res, err := verify.Run(context.Background(), dir, b, verify.Options{MaxAbs: -1, MaxRelL2: 2e-2,
					MaxNumBatchedTokens: budget, Out: logWriter{t}})
				require.NoError(t, err)
				require.NotEmpty(t, res)
				for _, r := range res {
					assert.True(t, r.Pass, "budget %d: %s", budget, r.Line())
					assert.LessOrEqual(t, r.RelL2, 2e-2, "budget %d: %s", budget, r.Name)
				}
			}
		}
		t.Run("defaults", run)
		// Every opt-in switch on (ablate_test.go's list: the fused decode GEMVs, split sampling
		// rows, pipelined and folded decode attention, qvl_gemm_skinny, cuBLASLt tuning), as
		// scripts/gpu-check.sh's verify-optin runs them: a subtest of its own, so that a GPU
		// run tells an opt-in's failure from the defaults'.
		t.Run("opt-ins", func(t *testing.T) {
			restore := saveOptins()
			for _, s := range optinSwitches {
				s.set(true)
			}
			b.DropGraphs()
			b.ResetProfile()
			b.SetProfiling(true)
			defer func() {
				b.SetProfiling(false)
				restore()
				b.DropGraphs()
			}()
			run(t)
			// The batched decode steps of the goldens' requests took the opt-in GEMM.
			ran := map[string]bool{}
			for _, o := range b.Profile() {
				ran[o.Name] = o.Calls > 0
			}
			assert.True(t, ran["qvl_gemm_skinny_m16"], "the opt-in run never launched qvl_gemm_skinny_m16: %v", ran)
		})
	})

}
