package model_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/model"
)

const goldenDir = "../../testdata/goldens/qwen3vl-tiny-a"

// single drives one sequence through Forward: the whole prompt in one step (or in chunks), then
// one token per step, with blocks numbered 0, 1, 2, ... in reverse so that the block table matters.
type single struct {
	m       *model.Model
	blocks  []int32
	ctx     int
	delta   int
	bs      int
	vocab   int
	chunk   int
	prompts []int32
}

func newSingle(t *testing.T, m *model.Model, chunk int) *single {
	const bs, nb = 4, 64
	require.NoError(t, m.InitCache(nb, bs))
	s := &single{m: m, bs: bs, vocab: m.Config.VocabSize, chunk: chunk}
	for i := nb - 1; i >= 0; i-- {
		s.blocks = append(s.blocks, int32(i))
	}
	return s
}

func (s *single) step(tokens, pos []int32, vis *visual, allLogits bool) []float32 {
	n := len(tokens)
	bt := &model.Batch{Tokens: tokens, Pos: pos}
	for i := 0; i < n; i++ {
		p := s.ctx + i
		bt.Slots = append(bt.Slots, s.blocks[p/s.bs]*int32(s.bs)+int32(p%s.bs))
		if allLogits || i == n-1 {
			bt.LogitRows = append(bt.LogitRows, int32(i))
		}
	}
	s.ctx += n
	bt.Seqs = []model.Seq{{QueryLen: n, CtxLen: s.ctx, Blocks: s.blocks}}
	if vis != nil {
		vis.fill(bt, s.ctx-n, n)
	}
	out, err := s.m.Forward(bt)
	if err != nil {
		panic(err)
	}
	return append([]float32(nil), out...)
}

// visual holds a case's image rows by prompt index.
type visual struct {
	h          int
	rows       map[int][]float32   // prompt index -> embedding row
	ds         map[int][][]float32 // prompt index -> DeepStack rows per level
	levels     int
	custom     []float32 // [Ne*D]
	customSlot map[int]int32
}

func (v *visual) fill(bt *model.Batch, from, n int) {
	if v.levels > 0 {
		bt.DeepStack = make([][]float32, v.levels)
	}
	for i := 0; i < n; i++ {
		if r, ok := v.rows[from+i]; ok {
			bt.VisualIdx = append(bt.VisualIdx, int32(i))
			bt.Visual = append(bt.Visual, r...)
		}
		if d, ok := v.ds[from+i]; ok {
			bt.DeepStackIdx = append(bt.DeepStackIdx, int32(i))
			for l := range d {
				bt.DeepStack[l] = append(bt.DeepStack[l], d[l]...)
			}
		}
		if src, ok := v.customSlot[from+i]; ok {
			bt.CustomIdx = append(bt.CustomIdx, int32(i))
			bt.CustomSrc = append(bt.CustomSrc, src)
		}
	}
	if len(bt.CustomIdx) > 0 {
		bt.Custom = v.custom
	}
}

func tensorF32(t *testing.T, f *loader.File, name string) []float32 {
	tt, err := f.Tensor(name)
	require.NoError(t, err)
	x, err := tt.Float32()
	require.NoError(t, err)
	return x
}

func tensorI64(t *testing.T, f *loader.File, name string) []int64 {
	tt, err := f.Tensor(name)
	require.NoError(t, err)
	x, err := tt.Int64s()
	require.NoError(t, err)
	return x
}

func maxAbsDiff(a, b []float32) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

func loadGolden(t *testing.T, ref bool) (*loader.GoldenSet, *model.Model) {
	gs, err := loader.LoadGoldens(goldenDir)
	require.NoError(t, err)
	ck, err := loader.OpenCheckpoint(gs.ModelDir())
	require.NoError(t, err)
	t.Cleanup(func() { ck.Close() })
	cfg, err := loader.LoadConfig(filepath.Join(gs.ModelDir(), "config.json"))
	require.NoError(t, err)
	proj, err := loader.LoadProjector(gs.ProjectorDir())
	require.NoError(t, err)
	t.Cleanup(func() { proj.Close() })
	b := cpu.New(cpu.Options{Reference: ref})
	m, err := model.Load(b, ck, cfg, proj, model.Options{})
	require.NoError(t, err)
	return gs, m
}

// TestGoldens runs every case of the shared goldens through Forward, whole-prompt and chunked,
// and checks the prompt logits and the teacher-forced decode logits against transformers.
func TestGoldens(t *testing.T) {
	gs, m := loadGolden(t, true)
	h, v := m.Config.HiddenSize, m.Config.VocabSize
	for _, gc := range gs.Cases {
		for _, chunk := range []int{0, 3} {
			f, err := gc.Open()
			require.NoError(t, err)
			ids := tensorI64(t, f, "input_ids")
			L := len(ids)
			tokens := make([]int32, L)
			for i, id := range ids {
				tokens[i] = int32(id)
			}
			var spans []model.ImageSpan
			vis := &visual{h: h, rows: map[int][]float32{}, ds: map[int][][]float32{}, customSlot: map[int]int32{}}
			img := int32(gs.SpecialIDs["img"])
			if gc.Kind != loader.KindText {
				grids := tensorI64(t, f, "image_grid_thw")
				start := 0
				for g := 0; g < len(grids)/3; g++ {
					merged, err := model.MergedGrid([3]int{int(grids[3*g]), int(grids[3*g+1]), int(grids[3*g+2])}, m.Config.SpatialMergeSize)
					require.NoError(t, err)
					for tokens[start] != img {
						start++
					}
					spans = append(spans, model.ImageSpan{Start: start, Grid: merged})
					start += merged[0] * merged[1] * merged[2]
				}
			}
			k := 0
			switch gc.Kind {
			case loader.KindImage:
				emb := tensorF32(t, f, "image_embeds")
				ds := tensorF32(t, f, "deepstack_embeds")
				nv := len(emb) / h
				vis.levels = len(ds) / (nv * h)
				for i, tok := range tokens {
					if tok == img {
						vis.rows[i] = emb[k*h : (k+1)*h]
						for l := 0; l < vis.levels; l++ {
							vis.ds[i] = append(vis.ds[i], ds[(l*nv+k)*h:(l*nv+k+1)*h])
						}
						k++
					}
				}
			case loader.KindCustom:
				vis.custom = tensorF32(t, f, "embeddings")
				for i, tok := range tokens {
					if tok == img {
						vis.customSlot[i] = int32(k)
						k++
					}
				}
			}
			pos, delta, err := model.Positions(L, spans)
			require.NoError(t, err)
			if f.Has("position_ids") {
				want := tensorI64(t, f, "position_ids")
				for i := 0; i < L; i++ {
					for a := 0; a < 3; a++ {
						require.EqualValues(t, want[a*L+i], pos[3*i+a], "%s: position axis %d of token %d", gc.Name, a, i)
					}
				}
			}

			s := newSingle(t, m, chunk)
			var got []float32
			if chunk == 0 {
				got = s.step(tokens, pos, vis, true)
			} else {
				for i := 0; i < L; i += chunk {
					j := min(i+chunk, L)
					got = append(got, s.step(tokens[i:j], pos[3*i:3*j], vis, true)...)
				}
			}
			want := tensorF32(t, f, "logits")
			d := maxAbsDiff(got, want)
			t.Logf("%s chunk=%d: prompt max|Δlogit| = %.2e", gc.Name, chunk, d)
			require.Less(t, d, 2e-3, "%s prompt logits", gc.Name)

			if f.Has("generated_ids") {
				gen := tensorI64(t, f, "generated_ids")
				gl := tensorF32(t, f, "generated_logits")
				require.Less(t, maxAbsDiff(got[(L-1)*v:], gl[:v]), 2e-3)
				var worst float64
				for i := 0; i+1 < len(gen); i++ {
					p := int32(L + i + delta)
					out := s.step([]int32{int32(gen[i])}, []int32{p, p, p}, nil, false)
					worst = math.Max(worst, maxAbsDiff(out, gl[(i+1)*v:(i+2)*v]))
				}
				t.Logf("%s chunk=%d: decode max|Δlogit| = %.2e over %d steps", gc.Name, chunk, worst, len(gen)-1)
				require.Less(t, worst, 2e-3, "%s decode logits", gc.Name)
			}
			f.Close()
		}
	}
}
