package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPDLModules: the PDL build has every module and kernel of the default build, each entry
// with exactly one launch_dependents and one wait, for sm_90; the default build has neither.
func TestPDLModules(t *testing.T) {
	def, err := Modules()
	require.NoError(t, err)
	pdl, err := PDLModules()
	require.NoError(t, err)
	require.Len(t, pdl, len(def))
	for i, m := range pdl {
		t.Run(m.Name, func(t *testing.T) {
			require.Equal(t, def[i].Name, m.Name)
			entries, err := Entries(m.PTX)
			require.NoError(t, err)
			require.NotEmpty(t, entries)
			assert.Equal(t, len(entries), bytes.Count(m.PTX, []byte(pdlWait)), "one wait per entry")
			assert.Equal(t, len(entries), bytes.Count(m.PTX, []byte("griddepcontrol.launch_dependents;")), "one launch_dependents per entry")
			assert.Contains(t, string(m.PTX), "\n.target sm_90\n")
			assert.NotContains(t, string(def[i].PTX), "griddepcontrol")
			assert.Contains(t, string(def[i].PTX), "\n.target sm_80\n")
		})
	}
}

const pdlSample = `//
.version 7.8
.target sm_90
.address_size 64

.visible .entry k1(
	.param .u64 k1_param_0
)
{
	griddepcontrol.launch_dependents;
	griddepcontrol.wait;
	ret;
}
.visible .entry k2(
	.param .u64 k2_param_0
)
{
	griddepcontrol.launch_dependents;
	griddepcontrol.wait;
	ret;
}
`

// withoutLast returns s without the last occurrence of sub.
func withoutLast(s, sub string) string {
	i := strings.LastIndex(s, sub)
	return s[:i] + s[i+len(sub):]
}

// TestPDLChecks covers what PDLModules refuses, each with an error that says why.
func TestPDLChecks(t *testing.T) {
	m := Module{Name: "s", PTX: []byte(pdlSample)}
	require.NoError(t, everyEntryWaits(m))
	require.NoError(t, sameEntries(m, m))

	err := everyEntryWaits(Module{Name: "s", PTX: []byte(withoutLast(pdlSample, pdlWait))})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pdl/s.ptx: kernel k2 does not start with QVL_PDL_ENTER()")
	err = everyEntryWaits(Module{Name: "s", PTX: []byte(strings.Replace(pdlSample, pdlWait, "", 1))})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kernel k1 does not start")

	fewer := Module{Name: "s", PTX: []byte(pdlSample[:strings.Index(pdlSample, ".visible .entry k2")])}
	err = sameEntries(m, fewer)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pdl/s.ptx has 1 kernels, s.ptx 2")
	renamed := Module{Name: "s", PTX: []byte(strings.ReplaceAll(pdlSample, "k2", "k3"))}
	err = sameEntries(m, renamed)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kernel 1 is k3")
	retyped := Module{Name: "s", PTX: []byte(strings.Replace(pdlSample, ".param .u64 k2_param_0", ".param .u32 k2_param_0", 1))}
	err = sameEntries(m, retyped)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "k2[.u32]")
}

// TestPDLAssembles assembles every PDL module for sm_90 with ptxas (the CUDA toolkit's
// assembler, which `make kernels` machines and CI have: nvcc -ptx does not run it), so that a
// GPU run is not the first to find that the PDL build does not assemble.
func TestPDLAssembles(t *testing.T) {
	ptxas, err := exec.LookPath("ptxas")
	if err != nil {
		t.Skip("no ptxas on PATH (the CUDA toolkit): the sm_90 PDL modules are not assembled here")
	}
	mods, err := PDLModules()
	require.NoError(t, err)
	dir := t.TempDir()
	for _, m := range mods {
		src := filepath.Join(dir, m.Name+".ptx")
		require.NoError(t, os.WriteFile(src, m.PTX, 0o644))
		out, err := exec.Command(ptxas, "-arch=sm_90", "-O0", src, "-o", filepath.Join(dir, m.Name+".cubin")).CombinedOutput()
		require.NoError(t, err, "ptxas -arch=sm_90 pdl/%s.ptx: %s", m.Name, out)
	}
}
