package cuda

import (
	"fmt"
	"math"
	"os"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSimScheduleFindsRaces shows that the emulation's schedules expose the races they are
// meant to: three probe kernels (testdata/sim/kernels.cc) each have one — a shared value read
// with no __syncthreads after its store, a lane reading another lane's store with no
// __syncwarp, a block reading what an earlier block wrote — which the forward schedule hides
// (the writer happens to run first) and the reverse and shuffle schedules must turn into a
// different answer. It also checks that shared memory is poisoned before every block. CI runs the whole package under each schedule (QVL_SIM_SCHEDULE), so a
// qvl kernel with such a race fails its op test there.
func TestSimScheduleFindsRaces(t *testing.T) {
	lib, skip, err := loadSim()
	require.NoError(t, err)
	if skip != "" {
		t.Skip(skip)
	}
	mode, seed, err := parseSimSchedule(os.Getenv("QVL_SIM_SCHEDULE"))
	require.NoError(t, err)
	t.Cleanup(func() { lib.schedule(mode, seed) })

	const blocks, threads = 5, 64
	buf := lib.alloc(4 * blocks * threads)
	defer lib.free(buf)
	salt := int32(1000)
	launch := func(name string, grid, block uint32) {
		salt += 1000
		lib.memset32(buf, 0, blocks*threads)
		vals := []uint64{buf, uint64(uint32(salt))}
		var msg [256]byte
		r := lib.launch(name, grid, 1, 1, block, 1, 1, 0, unsafe.Pointer(&vals[0]), int32(len(vals)), unsafe.Pointer(&msg[0]), int32(len(msg)))
		require.Zero(t, r, "%s: %s", name, msg[:])
	}
	f32s := func(n int) []float32 {
		out := make([]float32, n)
		lib.dtoh(unsafe.Pointer(&out[0]), buf, uint64(4*n))
		return out
	}
	// Each probe returns how many outputs differ from what a correctly synchronised kernel gives.
	probes := map[string]func() int{
		"smem_race": func() int {
			launch("qvlsim_probe_smem_race", blocks, threads)
			bad := 0
			for i, v := range f32s(blocks * threads) {
				if v != float32(salt+int32(i/threads)) {
					bad++
				}
			}
			return bad
		},
		"warp_race": func() int {
			launch("qvlsim_probe_warp_race", 1, threads)
			bad := 0
			for i, v := range f32s(threads) {
				if v != float32(salt+int32(i&^1)) {
					bad++
				}
			}
			return bad
		},
		"block_order": func() int {
			launch("qvlsim_probe_block_order", blocks, 32)
			bad := 0
			for i, v := range f32s(blocks) {
				if c := int32(math.Float32bits(v)); c != salt+int32(i) {
					bad++
				}
			}
			return bad
		},
	}
	schedules := []struct {
		name  string
		mode  int32
		seed  uint64
		races bool // whether the schedule must expose every probe's race
	}{{"forward", 0, 0, false}, {"reverse", 1, 0, true}, {"shuffle:1", 2, 1, true}, {"shuffle:2", 2, 2, true}}
	for _, s := range schedules {
		require.Zero(t, lib.schedule(s.mode, s.seed))
		for name, probe := range probes {
			t.Run(fmt.Sprintf("%s/%s", s.name, name), func(t *testing.T) {
				bad := probe()
				if s.races {
					assert.NotZero(t, bad, "the %s schedule hid the race of probe %s", s.name, name)
				} else {
					assert.Zero(t, bad, "probe %s: forward runs the writer first, so the race stays hidden", name)
				}
			})
		}
	}
	// Shared memory is poisoned before every block, under every schedule: a read before the
	// block's own store sees 0xff bytes, never the value an earlier block left.
	for _, s := range schedules {
		require.Zero(t, lib.schedule(s.mode, s.seed))
		launch("qvlsim_probe_smem_uninit", blocks, threads)
		for i, v := range f32s(blocks * threads) {
			require.Equal(t, uint32(0xffffffff), math.Float32bits(v), "%s: output %d read %v, not the poison", s.name, i, v)
		}
	}
	assert.Equal(t, int32(-1), lib.schedule(7, 0), "an unknown mode is refused")
}

func TestParseSimSchedule(t *testing.T) {
	for v, want := range map[string][2]uint64{"": {0, 0}, "forward": {0, 0}, "reverse": {1, 0}, "shuffle": {2, 1}, "shuffle:42": {2, 42}} {
		mode, seed, err := parseSimSchedule(v)
		require.NoError(t, err, v)
		assert.Equal(t, want, [2]uint64{uint64(mode), seed}, v)
	}
	for _, v := range []string{"backwards", "shuffle:x", "shuffle:-1", "reverse:3"} {
		_, _, err := parseSimSchedule(v)
		assert.ErrorContains(t, err, "QVL_SIM_SCHEDULE", v)
	}
}
