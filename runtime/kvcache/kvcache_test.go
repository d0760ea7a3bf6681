package kvcache

import (
	"hash"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPoolAllocateFree(t *testing.T) {
	p, err := NewPool(4, true)
	require.NoError(t, err)
	ids, ok := p.Allocate(3, nil)
	require.True(t, ok)
	require.Equal(t, []int32{0, 1, 2}, ids)
	require.Equal(t, 1, p.NumFree())
	// No room: nothing is taken.
	_, ok = p.Allocate(2, nil)
	require.False(t, ok)
	require.Equal(t, 1, p.NumFree())
	require.NoError(t, p.Free([]int32{2, 1}))
	require.Equal(t, 3, p.NumFree())
	require.Error(t, p.Free([]int32{2}), "double free is an error")
	require.Error(t, p.Free([]int32{9}))
	require.InDelta(t, 0.25, p.Usage(), 1e-9)
	_, err = NewPool(0, true)
	require.Error(t, err)
}

func TestPoolEvictsLeastRecentlyFreed(t *testing.T) {
	p, _ := NewPool(3, true)
	ids, _ := p.Allocate(3, nil)
	for i, id := range ids {
		p.Register(id, BlockHash{byte(i + 1)})
	}
	require.Equal(t, 3, p.NumCached())
	// Free 2, then 0, then 1: eviction takes 2 first.
	require.NoError(t, p.Free([]int32{2}))
	require.NoError(t, p.Free([]int32{0}))
	require.NoError(t, p.Free([]int32{1}))
	got, ok := p.Allocate(1, nil)
	require.True(t, ok)
	require.Equal(t, []int32{2}, got)
	_, hit := p.Lookup(BlockHash{3})
	require.False(t, hit, "block 2's cache entry is evicted")
	require.Equal(t, int64(1), p.Evictions())
	// A cached free block can be touched back into use.
	id, hit := p.Lookup(BlockHash{1})
	require.True(t, hit)
	p.Touch(id)
	require.Equal(t, int32(1), p.Block(id).Ref)
	require.Equal(t, 1, p.NumFree())
	// Registering the same contents twice keeps the first block.
	p.Register(2, BlockHash{1})
	id2, _ := p.Lookup(BlockHash{1})
	require.Equal(t, id, id2)
}

type text []int32

func (t text) Tokens() []int32               { return t }
func (t text) HashExtra(hash.Hash, int, int) {}
func seq(n int, off int32) text {
	s := make(text, n)
	for i := range s {
		s[i] = int32(i) + off
	}
	return s
}

func TestManagerPrefix(t *testing.T) {
	m, err := NewManager(8, 4, true)
	require.NoError(t, err)
	a := seq(10, 0)
	var sa Seq
	blocks, n := m.CachedPrefix(&sa, a, len(a))
	require.Zero(t, n)
	require.True(t, m.Allocate(&sa, blocks, 0, 10))
	require.Len(t, sa.Blocks, 3)
	m.Commit(&sa, a, 10)
	require.Equal(t, 2, m.Pool().NumCached(), "two full blocks registered")

	// Same first 8 tokens: two blocks hit, and at least one token is left to compute.
	b := append(seq(8, 0), 100, 101)
	var sb Seq
	blocks, n = m.CachedPrefix(&sb, b, len(b))
	require.Equal(t, 8, n)
	require.Equal(t, sa.Blocks[:2], blocks)
	require.True(t, m.Allocate(&sb, blocks, n, 2))
	require.Equal(t, int32(2), m.Pool().Block(sa.Blocks[0]).Ref)

	// A prompt that is exactly cached still computes its last token.
	c := seq(8, 0)
	var sc Seq
	_, n = m.CachedPrefix(&sc, c, len(c))
	require.Equal(t, 4, n)

	// Different first token: no hit (hashes chain).
	d := append(text{999}, seq(9, 1)...)
	var sd Seq
	_, n = m.CachedPrefix(&sd, d, len(d))
	require.Zero(t, n)

	require.NoError(t, m.Free(&sa))
	require.NoError(t, m.Free(&sb))
	require.Equal(t, 8, m.Pool().NumFree())
	// Freed blocks stay cached until evicted.
	_, n = m.CachedPrefix(&sc, c, len(c))
	require.Equal(t, 4, n)
}

func TestManagerNoRoom(t *testing.T) {
	m, _ := NewManager(3, 4, true)
	a := seq(12, 0)
	var s Seq
	require.True(t, m.Allocate(&s, nil, 0, 12))
	var s2 Seq
	require.False(t, m.Allocate(&s2, nil, 0, 1), "no free block")
	require.Empty(t, s2.Blocks)
	require.NoError(t, m.Free(&s))
	require.True(t, m.Allocate(&s2, nil, 0, 1))
	_ = a
}

func TestCachingOff(t *testing.T) {
	m, _ := NewManager(4, 2, false)
	a := seq(6, 0)
	var s Seq
	require.True(t, m.Allocate(&s, nil, 0, 6))
	m.Commit(&s, a, 6)
	require.Zero(t, m.Pool().NumCached())
	var s2 Seq
	_, n := m.CachedPrefix(&s2, a, 6)
	require.Zero(t, n)
}
