package cpu

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// TestOpErrors: ops reject operands that do not fit, naming the op and operand, before touching memory.
func TestOpErrors(t *testing.T) {
	b := NewReference()
	x := NewTensor(ml.F32, 3, 8)
	w := NewTensor(ml.BF16, 5, 7)
	out := NewTensor(ml.F32, 3, 5)
	err := b.MatMul(out, x, w)
	require.ErrorIs(t, err, ml.ErrShape)
	require.Contains(t, err.Error(), "MatMul: w")

	table := NewTensor(ml.BF16, 10, 8)
	toks := FromI32([]int32{1, 10, 2}, 3)
	err = b.EmbedProject(NewTensor(ml.F32, 3, 8), ml.EmbedArgs{Tokens: toks, Table: table})
	require.ErrorContains(t, err, "token 10 at row 1 is outside the vocabulary")

	err = b.Gather(NewTensor(ml.F32, 1, 8), x, FromI32([]int32{3}, 1))
	require.ErrorContains(t, err, "Gather: idx[0] = 3 is outside [0, 3)")

	err = b.EmbedProject(NewTensor(ml.F32, 3, 8), ml.EmbedArgs{Tokens: FromI32([]int32{1, 2, 3}, 3), Table: table,
		Custom: NewTensor(ml.F32, 1, 4), CustomIdx: FromI32([]int32{0}, 1), CustomSrc: FromI32([]int32{0}, 1)})
	require.ErrorContains(t, err, "no projector")
}

func TestProfile(t *testing.T) {
	b := NewReference()
	x := NewTensor(ml.F32, 2, 4)
	w := NewTensor(ml.BF16, 3, 4)
	out := NewTensor(ml.F32, 2, 3)
	require.NoError(t, b.MatMul(out, x, w))
	require.Empty(t, b.Profile(), "off by default")
	b.SetProfiling(true)
	require.NoError(t, b.MatMul(out, x, w))
	require.NoError(t, b.MatMul(out, x, w))
	p := b.Profile()
	require.Len(t, p, 1)
	require.Equal(t, "MatMul", p[0].Name)
	require.Equal(t, int64(2), p[0].Calls)
	b.ResetProfile()
	require.Empty(t, b.Profile())
}

func TestWriteReadRoundTrip(t *testing.T) {
	b := NewReference()
	bf, err := b.Alloc(ml.BF16, 3)
	require.NoError(t, err)
	require.NoError(t, b.Write(bf, []float32{1, 0.5, 3}))
	got := make([]float32, 3)
	require.NoError(t, b.Read(bf, got))
	require.Equal(t, []float32{1, 0.5, 3}, got)
	require.Error(t, b.Write(bf, []int32{1}))
	require.Error(t, b.Write(bf, make([]float32, 4)))
	v := b.Rows(NewTensor(ml.F32, 4, 2), 2)
	require.Equal(t, []int{2, 2}, v.Shape())
}
