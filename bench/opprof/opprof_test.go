package opprof

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/ml"
)

func TestWriteParsesBack(t *testing.T) {
	decode := FromOpTimes([]ml.OpTime{
		{Name: "matmul", Calls: 120, Total: 90 * time.Millisecond},
		{Name: "attention", Calls: 40, Total: 7 * time.Millisecond},
	}, map[string]string{"phase": "decode", "batch": "8"})
	prefill := FromOpTimes([]ml.OpTime{{Name: "matmul", Calls: 30, Total: 200 * time.Millisecond}}, map[string]string{"phase": "prefill"})
	var buf bytes.Buffer
	require.NoError(t, Write(&buf, append(decode, prefill...), 2*time.Second, "backend cpu", "model tiny"))

	p, err := profile.Parse(&buf)
	require.NoError(t, err)
	require.Len(t, p.SampleType, 2)
	assert.Equal(t, "time", p.SampleType[0].Type)
	assert.Equal(t, "nanoseconds", p.SampleType[0].Unit)
	assert.Equal(t, "calls", p.SampleType[1].Type)
	assert.Equal(t, "count", p.SampleType[1].Unit)
	assert.Equal(t, "time", p.DefaultSampleType)
	assert.Equal(t, int64(2e9), p.DurationNanos)
	assert.Equal(t, []string{"backend cpu", "model tiny"}, p.Comments)
	require.Len(t, p.Location, 2, "one location per op name")
	require.Len(t, p.Sample, 3)

	byOp := map[string][2]int64{}
	for _, s := range p.Sample {
		require.Len(t, s.Location, 1)
		name := s.Location[0].Line[0].Function.Name
		v := byOp[name]
		byOp[name] = [2]int64{v[0] + s.Value[0], v[1] + s.Value[1]}
		if name == "attention" {
			assert.Equal(t, []string{"decode"}, s.Label["phase"])
			assert.Equal(t, []string{"8"}, s.Label["batch"])
		}
	}
	assert.Equal(t, [2]int64{290e6, 150}, byOp["matmul"])
	assert.Equal(t, [2]int64{7e6, 40}, byOp["attention"])
}

func TestBuildRejectsBadSamples(t *testing.T) {
	_, err := Build([]Sample{{Op: "", Total: 1}}, 0)
	assert.ErrorContains(t, err, "no op name")
	_, err = Build([]Sample{{Op: "x", Total: -1}}, 0)
	assert.ErrorContains(t, err, "negative")
}

// TestGoToolPprofListsOps checks the file with the real `go tool pprof`, which is what users run.
func TestGoToolPprofListsOps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	path := filepath.Join(t.TempDir(), "ops.pb.gz")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, Write(f, []Sample{
		{Op: "matmul", Calls: 10, Total: 300 * time.Millisecond},
		{Op: "rms_norm", Calls: 20, Total: 10 * time.Millisecond},
	}, time.Second))
	require.NoError(t, f.Close())
	out, err := exec.Command(goBin, "tool", "pprof", "-top", path).CombinedOutput()
	require.NoError(t, err, string(out))
	s := string(out)
	assert.Contains(t, s, "matmul")
	assert.Contains(t, s, "rms_norm")
	assert.Less(t, strings.Index(s, "matmul"), strings.Index(s, "rms_norm"), "ops are listed by time")
	assert.Contains(t, s, "300ms")
}
