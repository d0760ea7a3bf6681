// Package sample turns logits into tokens: penalties, temperature, top-k, top-p and min-p
// filtering, seeded draws, greedy decoding and log-probabilities. It is the CPU reference that
// the CUDA sampling kernels are checked against.
package sample

import (
	"cmp"
	"container/heap"
	"slices"
)

// Candidate is a token and its score.
type Candidate struct {
	ID    int32
	Value float32
}

// better orders candidates by value, higher first, then by lower id.
func better(a, b Candidate) bool {
	return a.Value > b.Value || (a.Value == b.Value && a.ID < b.ID)
}

// compare sorts candidates best first.
func compare(a, b Candidate) int {
	if a.Value != b.Value {
		return cmp.Compare(b.Value, a.Value)
	}
	return cmp.Compare(a.ID, b.ID)
}

// minHeap keeps the k best candidates seen, the worst of them on top.
type minHeap []Candidate

func (h minHeap) Len() int           { return len(h) }
func (h minHeap) Less(i, j int) bool { return better(h[j], h[i]) }
func (h minHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *minHeap) Push(x any)        { *h = append(*h, x.(Candidate)) }
func (h *minHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// TopKRow returns the k largest entries of row, best first (ties: lower id first), appended to
// dst. k ≥ len(row) returns the whole row sorted. NaN entries are never selected.
func TopKRow(dst []Candidate, row []float32, k int) []Candidate {
	if k <= 0 {
		return dst[:0]
	}
	if k >= len(row) {
		dst = dst[:0]
		for i, v := range row {
			if v == v {
				dst = append(dst, Candidate{int32(i), v})
			}
		}
		slices.SortFunc(dst, compare)
		return dst
	}
	h := minHeap(dst[:0])
	for i, v := range row {
		if v != v {
			continue
		}
		c := Candidate{int32(i), v}
		if len(h) < k {
			heap.Push(&h, c)
		} else if better(c, h[0]) {
			h[0] = c
			heap.Fix(&h, 0)
		}
	}
	out := []Candidate(h)
	slices.SortFunc(out, compare)
	return out
}

// TopK is the batched reference: for each of the b rows of logits [b, v], the k[r] best entries
// best first. It is what the CUDA top-k kernel is compared against.
func TopK(logits []float32, b, v int, k []int) [][]Candidate {
	out := make([][]Candidate, b)
	for r := 0; r < b; r++ {
		out[r] = TopKRow(nil, logits[r*v:(r+1)*v], k[r])
	}
	return out
}
