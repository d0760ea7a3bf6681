package tokenizer

import (
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync/atomic"
)

// noMerge is the rank of a pair that has no merge rule.
const noMerge = math.MaxInt32

// heapThreshold is the piece length (in bytes) from which BPE uses the priority-queue algorithm; shorter
// pieces use a linear scan for the best pair, which is faster for them.
const heapThreshold = 48

// appendPiece appends the token ids of one pre-tokenizer piece (raw bytes) to dst.
func (t *Tokenizer) appendPiece(dst []int, piece string) []int {
	if len(piece) == 1 {
		return append(dst, int(t.byteID[piece[0]]))
	}
	if t.ignoreMerges {
		if id, ok := t.rawVocab[piece]; ok {
			return append(dst, int(id))
		}
	}
	cacheable := len(piece) <= cacheMaxPieceLen
	var slot *atomic.Pointer[cacheEntry]
	if cacheable {
		slot = &t.cache.slots[maphash.String(t.cache.seed, piece)&uint64(len(t.cache.slots)-1)]
		if e := slot.Load(); e != nil && e.key == piece {
			return append(dst, e.ids...)
		}
	}
	start := len(dst)
	if len(piece) < heapThreshold {
		var buf [heapThreshold]int32
		for _, id := range t.bpeSmall(piece, buf[:0]) {
			dst = append(dst, int(id))
		}
	} else {
		for _, id := range t.bpeHeap(piece) {
			dst = append(dst, int(id))
		}
	}
	if cacheable {
		slot.Store(&cacheEntry{key: strings.Clone(piece), ids: slices.Clone(dst[start:])})
	}
	return dst
}

// bpeCache memoizes the BPE result of short pieces. It is a direct-mapped table: a piece hashes to one
// slot, and a miss replaces the slot's entry. Reads and writes are lock-free, so concurrent Encode
// calls share it without contention.
type bpeCache struct {
	seed  maphash.Seed
	slots []atomic.Pointer[cacheEntry]
}

// cacheEntry is an immutable cached BPE result.
type cacheEntry struct {
	key string
	ids []int
}

func newBPECache(slots int) bpeCache {
	return bpeCache{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[cacheEntry], slots)}
}

// clear empties the cache.
func (c *bpeCache) clear() {
	for i := range c.slots {
		c.slots[i].Store(nil)
	}
}

// pair returns the merge rule for the adjacent tokens left and right.
func (t *Tokenizer) pair(left, right int32) merge {
	if m, ok := t.merges.get(left, right); ok {
		return m
	}
	return merge{rank: noMerge}
}

// bpeSmall merges a short piece: repeatedly apply the lowest-ranked merge, leftmost first, by scanning
// the ranks of the current adjacent pairs. ids is scratch space; the result aliases it.
func (t *Tokenizer) bpeSmall(piece string, ids []int32) []int32 {
	var rankBuf, newBuf [heapThreshold]int32
	for i := 0; i < len(piece); i++ {
		ids = append(ids, t.byteID[piece[i]])
	}
	ranks := rankBuf[:len(ids)-1]
	newIDs := newBuf[:len(ids)-1]
	for i := range ranks {
		m := t.pair(ids[i], ids[i+1])
		ranks[i], newIDs[i] = m.rank, m.id
	}
	for len(ids) > 1 {
		best, bestRank := -1, int32(noMerge)
		for i, r := range ranks {
			if r < bestRank {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		ids[best] = newIDs[best]
		copy(ids[best+1:], ids[best+2:])
		ids = ids[:len(ids)-1]
		copy(ranks[best:], ranks[best+1:])
		ranks = ranks[:len(ranks)-1]
		copy(newIDs[best:], newIDs[best+1:])
		newIDs = newIDs[:len(newIDs)-1]
		if best > 0 {
			m := t.pair(ids[best-1], ids[best])
			ranks[best-1], newIDs[best-1] = m.rank, m.id
		}
		if best < len(ids)-1 {
			m := t.pair(ids[best], ids[best+1])
			ranks[best], newIDs[best] = m.rank, m.id
		}
	}
	return ids
}

// bpeSymbol is a node of the doubly linked list of current tokens in bpeHeap.
type bpeSymbol struct {
	id         int32
	prev, next int32 // indices of the neighbours, -1 at the ends
}

// bpeHeap merges a long piece in O(n log n): a linked list of symbols and a min-heap of candidate
// merges keyed by rank<<32 | position (so ties go to the leftmost pair). A candidate is stale when the
// pair at its position has changed since it was pushed; it is then skipped when popped. It applies the
// same merges in the same order as bpeSmall.
func (t *Tokenizer) bpeHeap(piece string) []int32 {
	n := len(piece)
	syms := make([]bpeSymbol, n)
	for i := 0; i < n; i++ {
		syms[i] = bpeSymbol{id: t.byteID[piece[i]], prev: int32(i - 1), next: int32(i + 1)}
	}
	syms[n-1].next = -1
	h := make(candidateHeap, 0, n)
	for i := 0; i < n-1; i++ {
		if m := t.pair(syms[i].id, syms[i+1].id); m.rank != noMerge {
			h = append(h, uint64(m.rank)<<32|uint64(i))
		}
	}
	h.init()
	for len(h) > 0 {
		c := h.pop()
		rank, pos := int32(c>>32), int32(uint32(c))
		l := &syms[pos]
		if l.id < 0 || l.next < 0 {
			continue // merged into its left neighbour, or now last
		}
		right := l.next
		m := t.pair(l.id, syms[right].id)
		if m.rank != rank {
			// Stale: the pair at pos changed. Ranks identify pairs, and a position's pair never
			// returns to an earlier one (tokens only grow), so an equal rank means a live candidate.
			continue
		}
		l.id = m.id
		l.next = syms[right].next
		if l.next >= 0 {
			syms[l.next].prev = pos
		}
		syms[right].id = -1
		if p := l.prev; p >= 0 {
			if m := t.pair(syms[p].id, l.id); m.rank != noMerge {
				h.push(uint64(m.rank)<<32 | uint64(p))
			}
		}
		if l.next >= 0 {
			if m := t.pair(l.id, syms[l.next].id); m.rank != noMerge {
				h.push(uint64(m.rank)<<32 | uint64(pos))
			}
		}
	}
	out := make([]int32, 0, n/3+1)
	for i := int32(0); i >= 0; i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

// candidateHeap is a binary min-heap of merge candidates (rank<<32 | position).
type candidateHeap []uint64

func (h candidateHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *candidateHeap) push(c uint64) {
	*h = append(*h, c)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if s[i] >= s[p] {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *candidateHeap) pop() uint64 {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	if last > 0 {
		(*h).down(0)
	}
	return top
}

func (h candidateHeap) down(i int) {
	n := len(h)
	x := h[i]
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h[r] < h[l] {
			m = r
		}
		if h[m] >= x {
			break
		}
		h[i] = h[m]
		i = m
	}
	h[i] = x
}
