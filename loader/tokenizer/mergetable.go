package tokenizer

import (
	"fmt"
	"math/bits"
)

// mergeTable maps a pair of token ids to its merge rule. It is an open-addressing hash table with
// linear probing whose slots are single uint64 words, left id (20 bits) | right id (20 bits) | rank
// (24 bits), so that the whole table of a 150k-merge vocabulary fits in 2 MiB and lookups mostly hit
// the CPU cache; the merged token's id is looked up by rank.
type mergeTable struct {
	slots    []uint64
	shift    uint    // 64 - log2(len(slots))
	mergedID []int32 // mergedID[rank] is the id of the token the merge of that rank produces
}

const (
	mergeIDBits   = 20
	mergeRankBits = 24
	// maxMergeID bounds the token ids a merge table can hold (the all-ones id marks empty slots).
	maxMergeID = 1<<mergeIDBits - 2
	// maxMergeRank bounds the number of merges.
	maxMergeRank = 1<<mergeRankBits - 1
	emptySlot    = ^uint64(0)
)

func pairKey(left, right int32) uint64 {
	return uint64(uint32(left))<<mergeIDBits | uint64(uint32(right))
}

// newMergeTable sizes a table for n merges (load factor at most 0.6).
func newMergeTable(n int) (*mergeTable, error) {
	if n > maxMergeRank {
		return nil, fmt.Errorf("%d merges, at most %d are supported", n, maxMergeRank)
	}
	size := 1 << bits.Len(uint(n*5/3+1))
	mt := &mergeTable{slots: make([]uint64, size), shift: uint(64 - bits.TrailingZeros(uint(size))), mergedID: make([]int32, n)}
	for i := range mt.slots {
		mt.slots[i] = emptySlot
	}
	return mt, nil
}

func (mt *mergeTable) index(key uint64) uint64 { return (key * 0x9E3779B97F4A7C15) >> mt.shift }

// set records that left+right merges into merged with the given rank, replacing an earlier rule for
// the same pair (the later duplicate wins, as in the reference implementation).
func (mt *mergeTable) set(left, right, merged int32, rank int) error {
	for _, id := range [...]int32{left, right, merged} {
		if id < 0 || id > maxMergeID {
			return fmt.Errorf("token id %d is out of the supported range [0, %d]", id, maxMergeID)
		}
	}
	key := pairKey(left, right)
	mask := uint64(len(mt.slots) - 1)
	for i := mt.index(key); ; i = (i + 1) & mask {
		s := mt.slots[i]
		if s == emptySlot || s>>mergeRankBits == key {
			mt.slots[i] = key<<mergeRankBits | uint64(rank)
			mt.mergedID[rank] = merged
			return nil
		}
	}
}

// get returns the merge rule for the pair left, right.
func (mt *mergeTable) get(left, right int32) (merge, bool) {
	key := pairKey(left, right)
	mask := uint64(len(mt.slots) - 1)
	for i := mt.index(key); ; i = (i + 1) & mask {
		s := mt.slots[i]
		if s>>mergeRankBits == key {
			rank := int32(s & maxMergeRank)
			return merge{rank: rank, id: mt.mergedID[rank]}, true
		}
		if s == emptySlot {
			return merge{}, false
		}
	}
}
