package verify_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/verify"
)

const goldens = "../../testdata/goldens/qwen3vl-tiny-a"

// TestSharedGoldens runs the shared goldens through the engine on the CPU reference, whole and
// with a tiny step budget that forces chunked prefill, and requires every check to pass.
func TestSharedGoldens(t *testing.T) {
	for _, budget := range []int{0, 5} {
		var out strings.Builder
		dump := t.TempDir()
		res, err := verify.Run(context.Background(), goldens, cpu.NewReference(), verify.Options{Out: &out, Dump: dump, MaxNumBatchedTokens: budget})
		require.NoError(t, err)
		t.Logf("budget %d:\n%s", budget, out.String())
		require.Len(t, res, 5)
		for _, r := range res {
			require.NoError(t, r.Err, r.Name)
			require.True(t, r.Pass, r.Line())
			require.Less(t, r.MaxAbs, 2e-3)
			if r.Kind != loader.KindText {
				require.Equal(t, "ok", r.Positions, r.Name)
			}
			if r.Kind == loader.KindCustom {
				require.GreaterOrEqual(t, r.Projector, 0.0)
				require.Less(t, r.Projector, 1e-4)
			} else {
				require.Equal(t, r.GreedyTotal, r.GreedyAgree, r.Name)
				require.Equal(t, 10, r.GreedyTotal)
			}
			f, err := loader.OpenFile(filepath.Join(dump, r.Name+".safetensors"))
			require.NoError(t, err)
			lg, err := f.Tensor("logits")
			require.NoError(t, err)
			require.Equal(t, 1000, lg.Shape[1])
			f.Close()
		}
	}
}

// TestDetectsWrongReference corrupts a copy of the goldens and requires verify to fail.
func TestDetectsWrongReference(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS(goldens)))
	f, err := loader.OpenFile(filepath.Join(dir, "text_7.safetensors"))
	require.NoError(t, err)
	var ts []loader.WriteTensor
	for _, name := range f.Names() {
		tt, err := f.Tensor(name)
		require.NoError(t, err)
		data := append([]byte(nil), tt.Data...)
		if name == "logits" {
			x, err := tt.Float32()
			require.NoError(t, err)
			x[3*1000+17] += 0.01
			data = loader.F32Bytes(x)
		}
		ts = append(ts, loader.WriteTensor{Name: name, DType: tt.DType, Shape: tt.Shape, Data: data})
	}
	f.Close()
	require.NoError(t, os.Chmod(filepath.Join(dir, "text_7.safetensors"), 0o644))
	require.NoError(t, loader.WriteFile(filepath.Join(dir, "text_7.safetensors"), ts, nil))
	res, err := verify.Run(context.Background(), dir, cpu.NewReference(), verify.Options{})
	require.NoError(t, err)
	for _, r := range res {
		if r.Name == "text_7" {
			require.False(t, r.Pass, r.Line())
			require.InDelta(t, 0.01, r.MaxAbs, 1e-4)
		} else {
			require.True(t, r.Pass, r.Line())
		}
	}
}
