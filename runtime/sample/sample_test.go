package sample

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func randRow(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * 3)
	}
	return x
}

// TestTopKMatchesSort checks the batched top-k against a full sort on odd sizes, with ties and NaN.
func TestTopKMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, v := range []int{1, 5, 769, 4099} {
		b := 7
		logits := make([]float32, b*v)
		for i := range logits {
			logits[i] = float32(r.IntN(50)) / 4 // many ties
		}
		logits[3] = float32(math.NaN())
		ks := make([]int, b)
		for i := range ks {
			ks[i] = []int{1, 2, 17, 64, v, v + 5, 0}[i]
		}
		got := TopK(logits, b, v, ks)
		for row := 0; row < b; row++ {
			var all []Candidate
			for i, x := range logits[row*v : (row+1)*v] {
				if x == x {
					all = append(all, Candidate{int32(i), x})
				}
			}
			slices.SortFunc(all, compare)
			want := all[:min(ks[row], len(all))]
			if len(want) == 0 {
				want = nil
			}
			if len(got[row]) == 0 {
				got[row] = nil
			}
			require.Equal(t, want, got[row], "v=%d row=%d k=%d", v, row, ks[row])
		}
	}
}

func TestGreedyAndTies(t *testing.T) {
	s := NewState(Params{Logprobs: 3}, nil)
	row := []float32{1, 5, 5, float32(math.NaN()), 2}
	res := s.Sample(row)
	require.Equal(t, int32(1), res.ID, "ties go to the lower id, NaN never wins")
	require.Len(t, res.Top, 3)
	require.Equal(t, int32(1), res.Top[0].ID)
	require.Equal(t, int32(2), res.Top[1].ID)
	require.InDelta(t, float64(res.Top[0].Logprob), float64(res.Logprob), 1e-6)
}

func TestLogprobsAreRaw(t *testing.T) {
	row := []float32{0, 1, 2, 3}
	var z float64
	for _, v := range row {
		z += math.Exp(float64(v))
	}
	s := NewState(Params{Logprobs: 2, RepetitionPenalty: 2, Temperature: 0}, []int32{3})
	res := s.Sample(append([]float32(nil), row...))
	// The penalty halves token 3's logit to 1.5, so token 2 wins; its logprob is from raw logits.
	require.Equal(t, int32(2), res.ID)
	require.InDelta(t, 2-math.Log(z), float64(res.Logprob), 1e-6)
	require.Equal(t, int32(3), res.Top[0].ID)
}

func TestSeedReproducibleAndIndependent(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	row := randRow(r, 1000)
	draw := func(seed uint64, p Params) []int32 {
		p.Seed = &seed
		s := NewState(p, nil)
		var out []int32
		for i := 0; i < 50; i++ {
			out = append(out, s.Sample(append([]float32(nil), row...)).ID)
		}
		return out
	}
	for _, p := range []Params{{Temperature: 1}, {Temperature: 0.7, TopK: 50}, {Temperature: 1, TopP: 0.9}, {Temperature: 1, MinP: 0.1}} {
		require.Equal(t, draw(9, p), draw(9, p))
		require.NotEqual(t, draw(9, p), draw(10, p))
	}
}

// TestDistribution: sampled frequencies follow softmax(logits/T) after each filter.
func TestDistribution(t *testing.T) {
	row := []float32{2, 1.5, 1, 0.2, -1, -3}
	const n = 40000
	probs := func(T float64, keep int) []float64 {
		p := make([]float64, len(row))
		var z float64
		for i := 0; i < keep; i++ {
			p[i] = math.Exp(float64(row[i]) / T)
			z += p[i]
		}
		for i := range p {
			p[i] /= z
		}
		return p
	}
	cases := []struct {
		p    Params
		want []float64
	}{
		{Params{Temperature: 1}, probs(1, 6)},
		{Params{Temperature: 0.5}, probs(0.5, 6)},
		{Params{Temperature: 1, TopK: 3}, probs(1, 3)},
		// softmax(row): 0.455 0.276 0.168 0.075 0.023 0.003 -> top-p 0.7 keeps 2 tokens (0.731).
		{Params{Temperature: 1, TopP: 0.7}, probs(1, 2)},
		// min-p 0.15: keep tokens with p >= 0.15*0.455 = 0.068 -> 4 tokens.
		{Params{Temperature: 1, MinP: 0.15}, probs(1, 4)},
	}
	for _, c := range cases {
		seed := uint64(77)
		c.p.Seed = &seed
		c.p.Logprobs = -1
		s := NewState(c.p, nil)
		counts := make([]float64, len(row))
		for i := 0; i < n; i++ {
			counts[s.Sample(append([]float32(nil), row...)).ID]++
		}
		for i := range counts {
			got := counts[i] / n
			sd := math.Sqrt(c.want[i]*(1-c.want[i])/n) + 1e-9
			require.InDelta(t, c.want[i], got, 5*sd+1e-4, "params %+v token %d", c.p, i)
		}
	}
}

func TestPenalties(t *testing.T) {
	s := NewState(Params{PresencePenalty: 1, FrequencyPenalty: 0.5, Logprobs: -1}, nil)
	s.Observe(2)
	s.Observe(2)
	s.Observe(0)
	row := []float32{3, 0, 3.5, 0}
	raw := s.penalize(row)
	require.Equal(t, []float32{3 - 1.5, 0, 3.5 - 2, 0}, row)
	require.Equal(t, float32(3.5), raw[2])

	rp := NewState(Params{RepetitionPenalty: 2, Logprobs: -1}, []int32{1})
	rp.Observe(3)
	row = []float32{1, 4, -2, -3}
	rp.penalize(row)
	require.Equal(t, []float32{1, 2, -2, -6}, row)
}

func TestValidate(t *testing.T) {
	bad := []Params{{Temperature: -1}, {TopP: 1.5}, {MinP: -0.1}, {TopK: -2}, {Logprobs: 21},
		{PresencePenalty: 3}, {Temperature: float32(math.NaN())}, {RepetitionPenalty: -1}}
	for _, p := range bad {
		require.Error(t, p.Validate(), "%+v", p)
	}
	require.NoError(t, Params{Temperature: 0.7, TopP: 0.9, TopK: 20, MinP: 0.05, Logprobs: 20}.Validate())
}

func BenchmarkSampleVocab(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	row := randRow(r, 151936)
	buf := make([]float32, len(row))
	for _, c := range []struct {
		name string
		p    Params
	}{{"greedy", Params{Logprobs: -1}}, {"temp", Params{Temperature: 0.8, Logprobs: -1}},
		{"topk50", Params{Temperature: 0.8, TopK: 50, Logprobs: -1}}, {"topp0.9", Params{Temperature: 0.8, TopP: 0.9, Logprobs: -1}},
		{"logprobs5", Params{Logprobs: 5}}} {
		b.Run(c.name, func(b *testing.B) {
			s := NewState(c.p, nil)
			for i := 0; i < b.N; i++ {
				copy(buf, row)
				s.Sample(buf)
			}
		})
	}
}

// TestDrawAllNaN: a row of NaN logits (a model gone bad) draws token 0 under every filter
// instead of panicking in the engine's loop.
func TestDrawAllNaN(t *testing.T) {
	row := make([]float32, 7)
	for i := range row {
		row[i] = float32(math.NaN())
	}
	var d Drawer
	for _, p := range []Params{{}, {Temperature: 1}, {Temperature: 1, TopK: 3}, {Temperature: 1, TopP: 0.5},
		{Temperature: 1, MinP: 0.1}, {Temperature: 0.7, TopK: 20, TopP: 0.8, MinP: 0.05}} {
		require.Equal(t, int32(0), d.Draw(row, p.Temperature, p.TopK, p.TopP, p.MinP, 0.5), "%+v", p)
	}
}
