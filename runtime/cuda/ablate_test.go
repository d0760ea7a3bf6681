package cuda

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The benchmark's ablation (QVL_BENCH_ABLATE=1): the decode steps at batch 1 and batch N timed
// once per combination of the opt-in switches that the process can flip, in one process on one
// model, so that one GPU run says what each switch is worth alone and what the others lose
// without it — where a run per setting would pay the driver's PTX compile and the weights'
// upload each time, and measuring them only all together could not tell them apart.
// QVL_CUDA_PDL chooses the kernels' modules when the backend opens, so it keeps its own run
// (scripts/gpu-check.sh's bench-pdl).

// optinSwitch is one opt-in of the CUDA backend that the ablation flips.
type optinSwitch struct {
	name string // its environment variable
	get  func() bool
	set  func(on bool)
}

// optinSwitches are the switches in the order the ablation adds them. The cuBLASLt tuning is
// last: a tuned shape keeps its algorithm in the plan cache, so it cannot be turned off again.
var optinSwitches = []optinSwitch{
	{envFuse, func() bool { return !fuseOff.Load() }, func(on bool) { fuseOff.Store(!on) }},
	{envSampleSplit, sampleSplitOn.Load, sampleSplitOn.Store},
	{envAttnPipe, attnPipeOn.Load, attnPipeOn.Store},
	{envSkinny, skinnyOn.Load, skinnyOn.Store},
	{envGLU, gluOn.Load, gluOn.Store},
	{envTune, func() bool { return !tuneOff.Load() }, func(on bool) { tuneOff.Store(!on) }},
}

// defaultSwitches are the switches that are on by default (opt-ins that a GPU run promoted): the
// ablation times the defaults without each of them, named "-" + the variable, so that every run
// still measures what each is worth. The opt-in settings keep them on.
var defaultSwitches = []optinSwitch{
	{envQKVFold, qkvFoldOn.Load, qkvFoldOn.Store},
}

// saveOptins returns a function that sets every opt-in and default switch back to its value now.
func saveOptins() func() {
	all := append(slices.Clone(optinSwitches), defaultSwitches...)
	saved := make([]bool, len(all))
	for i, s := range all {
		saved[i] = s.get()
	}
	return func() {
		for i, s := range all {
			s.set(saved[i])
		}
	}
}

// setSwitches sets the switches for a setting of the ablation: the opt-ins named in on, and every
// default switch unless on names it with a "-".
func setSwitches(on []string) {
	for _, s := range optinSwitches {
		s.set(slices.Contains(on, s.name))
	}
	for _, s := range defaultSwitches {
		s.set(!slices.Contains(on, "-"+s.name))
	}
}

// ablationConfigs lists the settings the ablation times: the defaults (every opt-in off), each
// opt-in alone, every opt-in but the tuning, every opt-in but one of them, the defaults without
// each default switch ("-" + its name), then the tuning alone and everything (the tuning, once
// on, stays on). Each is the set of opt-ins on (and default switches off), by name.
func ablationConfigs() [][]string {
	var names []string
	for _, s := range optinSwitches {
		names = append(names, s.name)
	}
	untuned := names[:len(names)-1]
	configs := [][]string{{}}
	for _, n := range untuned {
		configs = append(configs, []string{n})
	}
	configs = append(configs, untuned)
	for i := range untuned {
		var but []string
		for j, n := range untuned {
			if j != i {
				but = append(but, n)
			}
		}
		configs = append(configs, but)
	}
	for _, s := range defaultSwitches {
		configs = append(configs, []string{"-" + s.name})
	}
	return append(configs, []string{envTune}, names)
}

// ablationLabel names a setting for the report: "defaults", "all opt-ins", "all but X, Y"
// for the settings that leave out one or two switches, "-X" for the defaults without default
// switch X, else the switches on, each with a "+".
func ablationLabel(on []string) string {
	if len(on) == 0 {
		return "defaults"
	}
	if len(on) == 1 && strings.HasPrefix(on[0], "-") {
		return on[0]
	}
	var off []string
	for _, s := range optinSwitches {
		if !slices.Contains(on, s.name) {
			off = append(off, s.name)
		}
	}
	switch {
	case len(off) == 0:
		return "all opt-ins"
	case len(off) <= 2 && len(on) > 1:
		return "all but " + strings.Join(off, ", ")
	}
	return "+" + strings.Join(on, " +")
}

// ablate times decode steps of m at batch 1 and batch len(all) under each setting of configs
// (ablationConfigs on a GPU; the first must be the defaults). Every timing starts from the sequences' lengths at entry (the steps
// overwrite the same cache slots), so each setting decodes over the same contexts. The
// switches are restored on return.
func ablate(t *testing.T, b *Backend, m *model.Model, rep *benchReport, all []*seqState, bs, steps int, configs [][]string) {
	restore := saveOptins()
	defer func() {
		restore()
		b.DropGraphs()
	}()
	lens := make([]int, len(all))
	for i, s := range all {
		lens[i] = s.n
	}
	rewind := func() {
		for i, s := range all {
			s.n = lens[i]
		}
	}
	r := rand.New(rand.NewPCG(11, 11))
	greedy := func(n int) []ml.SampleParams { return make([]ml.SampleParams, n) }
	fmt.Printf("BENCH | ablation: decode steps (graphs) per setting of the opt-ins, from the same contexts\n")
	var base [2]float64
	res := map[string][2]float64{}
	for ci, on := range configs {
		setSwitches(on)
		b.DropGraphs()
		label := ablationLabel(on)
		for bi, batch := range []int{1, len(all)} {
			rewind()
			for w := 0; w < 3; w++ { // the first captures the graph (and tunes, when on)
				_, err := m.ForwardSample(textBatch(r, all[:batch], 1, bs), greedy(batch))
				require.NoError(t, err, label)
			}
			rewind()
			start := time.Now()
			for s := 0; s < steps; s++ {
				_, err := m.ForwardSample(textBatch(r, all[:batch], 1, bs), greedy(batch))
				require.NoError(t, err, label)
			}
			el := time.Since(start)
			var v float64
			var unit, cmp string
			if batch == 1 {
				v, unit = el.Seconds()*1e3/float64(steps), "ms/tok"
			} else {
				v, unit = float64(batch*steps)/el.Seconds(), "tok/s"
			}
			if ci == 0 {
				base[bi] = v
				cmp = "the baseline of this table"
			} else {
				cmp = fmt.Sprintf("%+.1f%% against the defaults", 100*(v/base[bi]-1))
			}
			rep.add(fmt.Sprintf("  ablation b=%d: %s", batch, label), v, unit, "", cmp)
			r := res[label]
			r[bi] = v
			res[label] = r
		}
	}
	rewind()
	for _, l := range ablationSummary(res) {
		fmt.Printf("BENCH-ABLATION | %s\n", l)
	}
}

// ablationSummary turns the ablation's results (by setting label: batch-1 ms/tok, batch-N
// tok/s) into a line per switch: its gain alone (against the defaults) and in the mix (all the
// untuned switches against the same without it; the tuning: everything against all but it),
// at batch 1 and batch N, and a verdict: "faster" when some gain is ≥ 1% and none is a loss of
// 1% or more, "slower" the other way round, "same" when all are within 1%, else "mixed".
// Settings the results lack give "n/a".
func ablationSummary(res map[string][2]float64) []string {
	var untuned []string
	for _, s := range optinSwitches {
		if s.name != envTune {
			untuned = append(untuned, s.name)
		}
	}
	// gain is how much faster setting a is than setting b, at batch index bi, in percent.
	gain := func(a, b string, bi int) (float64, bool) {
		ra, oka := res[a]
		rb, okb := res[b]
		if !oka || !okb || ra[bi] <= 0 || rb[bi] <= 0 {
			return 0, false
		}
		if bi == 0 { // ms/tok: lower is faster
			return 100 * (rb[0]/ra[0] - 1), true
		}
		return 100 * (ra[1]/rb[1] - 1), true
	}
	// tally appends to p the gains of setting a over setting b at both batches and counts those
	// of 1% or more (up), of −1% or less (down) and the ones measured (seen).
	type tally struct{ up, down, seen int }
	add := func(p string, a, b string, t *tally) string {
		for bi, bn := range []string{"b=1", "b=N"} {
			g, ok := gain(a, b, bi)
			if !ok {
				p += " " + bn + " n/a"
				continue
			}
			t.seen++
			p += fmt.Sprintf(" %s %+.1f%%", bn, g)
			switch {
			case g >= 1:
				t.up++
			case g <= -1:
				t.down++
			}
		}
		return p
	}
	var out []string
	for _, sw := range optinSwitches {
		alone := ablationLabel([]string{sw.name})
		mix, without := ablationLabel(untuned), ablationLabel(slices.DeleteFunc(slices.Clone(untuned), func(n string) bool { return n == sw.name }))
		if sw.name == envTune {
			mix, without = ablationLabel(append(slices.Clone(untuned), envTune)), ablationLabel(untuned)
		}
		var tl tally
		parts := []string{add("alone:", alone, "defaults", &tl), add("in the mix:", mix, without, &tl)}
		verdict := "mixed"
		switch {
		case tl.seen == 0:
			verdict = "n/a"
		case tl.up > 0 && tl.down == 0:
			verdict = "faster"
		case tl.down > 0 && tl.up == 0:
			verdict = "slower"
		case tl.up == 0 && tl.down == 0:
			verdict = "same"
		}
		out = append(out, fmt.Sprintf("%-22s | %s | %s | %s", sw.name, parts[0], parts[1], verdict))
	}
	// A default switch: what the defaults gain by it (the defaults against the defaults without it).
	for _, sw := range defaultSwitches {
		var tl tally
		p := add("default on, its gain:", "defaults", "-"+sw.name, &tl)
		verdict := "keep"
		switch {
		case tl.seen == 0:
			verdict = "n/a"
		case tl.down > 0 && tl.up == 0:
			verdict = "slower: turn it back off"
		case tl.up == 0 && tl.down == 0:
			verdict = "same"
		case tl.down > 0:
			verdict = "mixed"
		}
		out = append(out, fmt.Sprintf("%-22s | %s | %s", sw.name, p, verdict))
	}
	return out
}

// TestAblationConfigs checks the settings' list: the defaults first, every switch alone,
// the tuning only after every untuned setting, and no setting twice.
func TestAblationConfigs(t *testing.T) {
	cs := ablationConfigs()
	require.Empty(t, cs[0])
	seen := map[string]bool{}
	tuned := false
	alone := map[string]bool{}
	for _, c := range cs {
		label := ablationLabel(c)
		require.False(t, seen[label], "setting %q twice", label)
		seen[label] = true
		hasTune := slices.Contains(c, envTune)
		require.False(t, tuned && !hasTune, "%q runs after the tuning was turned on", label)
		tuned = tuned || hasTune
		if len(c) == 1 {
			alone[c[0]] = true
		}
	}
	for _, s := range optinSwitches {
		require.True(t, alone[s.name], "%s is never timed alone", s.name)
		require.True(t, s.name == envTune || seen["all but "+s.name+", "+envTune], "%s is never left out of the rest", s.name)
	}
	for _, s := range defaultSwitches {
		require.True(t, seen["-"+s.name], "the defaults are never timed without %s", s.name)
		require.False(t, slices.ContainsFunc(optinSwitches, func(o optinSwitch) bool { return o.name == s.name }),
			"%s is both an opt-in and a default", s.name)
	}
	require.Equal(t, "all opt-ins", ablationLabel(cs[len(cs)-1]))
	require.Equal(t, 2+2*(len(optinSwitches)-1)+len(defaultSwitches)+2, len(cs))
}

// ablateWanted reports whether the benchmark runs the ablation.
func ablateWanted() bool { return os.Getenv("QVL_BENCH_ABLATE") == "1" }

// TestAblationSummary checks the per-switch lines on made-up results: a switch that helps
// alone and in the mix, one that hurts, the tuning against everything, and missing settings.
func TestAblationSummary(t *testing.T) {
	var untuned []string
	for _, s := range optinSwitches {
		if s.name != envTune {
			untuned = append(untuned, s.name)
		}
	}
	without := func(n string) string {
		return ablationLabel(slices.DeleteFunc(slices.Clone(untuned), func(m string) bool { return m == n }))
	}
	res := map[string][2]float64{
		"defaults":                   {2.0, 1000},
		"+" + envFuse:                {1.8, 1000}, // b=1 11% faster alone
		"+" + envSkinny:              {2.0, 950},  // b=N 5% slower alone
		ablationLabel(untuned):       {1.6, 1100},
		without(envFuse):             {1.8, 1100}, // FUSE gains 12.5% at b=1 in the mix
		without(envSkinny):           {1.6, 1150}, // SKINNY loses 4.3% at b=N in the mix
		"all opt-ins":                {1.6, 1210}, // the tuning: +10% at b=N
		"+" + envTune:                {2.0, 1000},
		ablationLabel([]string{"x"}): {1, 1},
		"-" + envQKVFold:             {2.2, 980}, // the defaults are 9.1% and 2.0% faster with it
	}
	lines := map[string]string{}
	for _, l := range ablationSummary(res) {
		lines[strings.Fields(l)[0]] = l
	}
	require.Len(t, lines, len(optinSwitches)+len(defaultSwitches))
	assert.Equal(t, fmt.Sprintf("%-22s | default on, its gain: b=1 +10.0%% b=N +2.0%% | keep", envQKVFold), lines[envQKVFold])
	assert.Contains(t, lines[envFuse], "alone: b=1 +11.1% b=N +0.0%")
	assert.Contains(t, lines[envFuse], "in the mix: b=1 +12.5% b=N +0.0%")
	assert.True(t, strings.HasSuffix(lines[envFuse], "| faster"), lines[envFuse])
	assert.True(t, strings.HasSuffix(lines[envSkinny], "| slower"), lines[envSkinny])
	assert.Contains(t, lines[envTune], "in the mix: b=1 +0.0% b=N +10.0%")
	assert.True(t, strings.HasSuffix(lines[envTune], "| faster"), lines[envTune])
	assert.Contains(t, lines[envSampleSplit], "alone: b=1 n/a b=N n/a")
}
