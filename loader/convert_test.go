package loader

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refBF16 rounds f to bfloat16 by choosing the nearer of the two
// neighbouring bfloat16 values in float64 arithmetic, ties to the even one.
// It is an independent formulation of the same rounding as F32ToBF16.
func refBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	lo := uint16(bits >> 16) // truncation, toward zero
	hi := lo + 1             // next magnitude away from zero
	dl := math.Abs(float64(f) - float64(BF16ToF32(lo)))
	var dh float64
	if hiV := BF16ToF32(hi); math.IsInf(float64(hiV), 0) {
		// Past the largest finite value the next neighbour is Inf: IEEE
		// rounding treats it as 2^128 for the comparison.
		dh = math.Abs(math.Ldexp(1, 128)*math.Copysign(1, float64(f)) - float64(f))
	} else {
		dh = math.Abs(float64(f) - float64(hiV))
	}
	switch {
	case dl < dh:
		return lo
	case dh < dl:
		return hi
	case lo&1 == 0:
		return lo
	default:
		return hi
	}
}

func TestF32ToBF16Cases(t *testing.T) {
	for _, c := range []struct {
		name string
		in   uint32
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"tie to even stays", 0x3f808000, 0x3f80},
		{"tie to even rounds up", 0x3f818000, 0x3f82},
		{"above tie", 0x3f808001, 0x3f81},
		{"below tie", 0x3f807fff, 0x3f80},
		{"negative tie up", 0xbf818000, 0xbf82},
		{"max finite overflows to inf", 0x7f7fffff, 0x7f80},
		{"largest that stays finite", 0x7f7f7fff, 0x7f7f},
		{"+inf", 0x7f800000, 0x7f80},
		{"-inf", 0xff800000, 0xff80},
		{"+0", 0, 0},
		{"-0", 0x80000000, 0x8000},
		{"subnormal tie even", 0x00008000, 0x0000},
		{"subnormal tie odd", 0x00018000, 0x0002},
		{"smallest subnormal", 0x00000001, 0x0000},
		{"largest subnormal to smallest normal", 0x807fffff, 0x8080},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := F32ToBF16(math.Float32frombits(c.in))
			assert.Equal(t, c.want, got, "F32ToBF16(%#08x) = %#04x", c.in, got)
		})
	}
}

func TestF32ToBF16NaN(t *testing.T) {
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xff800001, 0x7fbfffff, 0x7f80ffff} {
		got := F32ToBF16(math.Float32frombits(bits))
		f := BF16ToF32(got)
		assert.True(t, math.IsNaN(float64(f)), "NaN %#08x became %#04x", bits, got)
		assert.Equal(t, bits>>31, uint32(got>>15), "sign of NaN %#08x", bits)
	}
}

func TestF32ToBF16MatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	check := func(bits uint32) {
		f := math.Float32frombits(bits)
		if math.IsNaN(float64(f)) {
			return
		}
		require.Equal(t, refBF16(f), F32ToBF16(f), "bits %#08x", bits)
	}
	for range 200000 {
		check(r.Uint32())
	}
	// Every bfloat16 value, its exact ties and their neighbours.
	for hi := range uint32(1 << 16) {
		for _, lo := range []uint32{0, 1, 0x7fff, 0x8000, 0x8001, 0xffff} {
			check(hi<<16 | lo)
		}
	}
}

func TestBF16RoundTripAllValues(t *testing.T) {
	for b := range uint32(1 << 16) {
		f := BF16ToF32(uint16(b))
		got := F32ToBF16(f)
		if math.IsNaN(float64(f)) {
			require.True(t, math.IsNaN(float64(BF16ToF32(got))), "NaN %#04x", b)
			continue
		}
		require.Equal(t, uint16(b), got, "bf16 %#04x -> %g -> %#04x", b, f, got)
	}
}

// refF16 decodes a half by its definition.
func refF16(h uint16) float64 {
	s := 1.0
	if h&0x8000 != 0 {
		s = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0:
		return s * math.Ldexp(m, -24)
	case 0x1f:
		if m == 0 {
			return math.Inf(int(s))
		}
		return math.NaN()
	default:
		return s * math.Ldexp(1+m/1024, e-15)
	}
}

func TestF16ToF32AllValues(t *testing.T) {
	for h := range uint32(1 << 16) {
		got := float64(F16ToF32(uint16(h)))
		want := refF16(uint16(h))
		if math.IsNaN(want) {
			require.True(t, math.IsNaN(got), "f16 %#04x", h)
			continue
		}
		require.Equal(t, want, got, "f16 %#04x", h)
		require.Equal(t, math.Signbit(want), math.Signbit(got), "sign of f16 %#04x", h)
	}
	assert.Equal(t, float32(65504), F16ToF32(0x7bff))
	assert.Equal(t, float32(math.Ldexp(1, -24)), F16ToF32(0x0001))
}

func TestEncoders(t *testing.T) {
	assert.Equal(t, []byte{0x80, 0x3f, 0xc0, 0xbf}, BF16Bytes([]float32{1, -1.5}))
	assert.Equal(t, []byte{0, 0, 0x80, 0x3f}, F32Bytes([]float32{1}))
	assert.Equal(t, []byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0, 0, 0, 0, 0}, I64Bytes([]int64{-2, 7}))
	assert.Empty(t, BF16Bytes(nil))
}

func TestDType(t *testing.T) {
	for _, name := range []string{"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"} {
		d, err := ParseDType(name)
		require.NoError(t, err)
		assert.Equal(t, name, d.String())
	}
	sizes := map[DType]int{F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, Bool: 1}
	for d, s := range sizes {
		assert.Equal(t, s, d.Size(), d.String())
	}
	_, err := ParseDType("bf16")
	require.ErrorContains(t, err, `unknown dtype "bf16"`)
	assert.Equal(t, "DType(42)", DType(42).String())
	assert.Equal(t, 0, DType(-1).Size())
}
