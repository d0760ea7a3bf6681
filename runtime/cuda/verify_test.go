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
func TestVerifyGoldens(t *testing.T) {
	root, err := repoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "testdata", "goldens", "qwen3vl-tiny-a")
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		skipShortSim(t, gpu)
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
	})
}
