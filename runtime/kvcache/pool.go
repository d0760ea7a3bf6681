// Package kvcache manages the paged KV cache's blocks: a pool of fixed-size blocks with
// reference counts, an LRU free queue, and a prefix cache that lets requests that share a prefix
// (a system prompt, the same image) share the blocks that hold it. It is modelled on vLLM v1's
// BlockPool and KVCacheManager and knows nothing about models: the tensors themselves live in the
// backend (ml.KVLayout documents their layout) and are addressed by the block numbers handed out here.
package kvcache

import (
	"fmt"
)

// BlockHash identifies the contents of a full block: a hash of the previous block's hash, the
// block's token ids and the content of any image rows in it.
type BlockHash [32]byte

// Block is one physical block of the cache.
type Block struct {
	// ID is the block number used in block tables.
	ID int32
	// Ref counts the requests whose block tables hold the block.
	Ref int32
	// Hash is the content hash of a full block registered in the prefix cache.
	Hash BlockHash
	// Cached reports whether Hash is registered in the prefix cache.
	Cached bool

	prev, next int32 // free queue links (-1 = none)
	inFree     bool
}

// Pool is the set of blocks. Free blocks (Ref == 0) wait in a queue ordered by when they were
// freed: allocation takes the least recently freed block, evicting its prefix-cache entry if it has one,
// so recently used cached blocks stay reusable longest.
type Pool struct {
	blocks     []Block
	head, tail int32 // free queue
	numFree    int
	cached     map[BlockHash]int32
	caching    bool

	// Stats.
	evictions int64
}

// NewPool makes a pool of n blocks, all free. With caching off, no block is ever registered in
// the prefix cache.
func NewPool(n int, caching bool) (*Pool, error) {
	if n <= 0 {
		return nil, fmt.Errorf("kvcache: a pool needs at least one block, got %d", n)
	}
	p := &Pool{blocks: make([]Block, n), head: -1, tail: -1, cached: map[BlockHash]int32{}, caching: caching}
	for i := range p.blocks {
		p.blocks[i] = Block{ID: int32(i), prev: -1, next: -1}
		p.pushBack(int32(i))
	}
	return p, nil
}

// NumBlocks is the pool's size.
func (p *Pool) NumBlocks() int { return len(p.blocks) }

// NumFree is the number of blocks with no reference (cached or not).
func (p *Pool) NumFree() int { return p.numFree }

// Usage is the fraction of blocks in use by requests.
func (p *Pool) Usage() float64 { return 1 - float64(p.numFree)/float64(len(p.blocks)) }

// Evictions counts prefix-cache entries evicted to make room.
func (p *Pool) Evictions() int64 { return p.evictions }

// NumCached is the number of blocks registered in the prefix cache.
func (p *Pool) NumCached() int { return len(p.cached) }

// Block returns block id.
func (p *Pool) Block(id int32) *Block { return &p.blocks[id] }

func (p *Pool) pushBack(id int32) {
	b := &p.blocks[id]
	b.prev, b.next, b.inFree = p.tail, -1, true
	if p.tail >= 0 {
		p.blocks[p.tail].next = id
	} else {
		p.head = id
	}
	p.tail = id
	p.numFree++
}

func (p *Pool) remove(id int32) {
	b := &p.blocks[id]
	if b.prev >= 0 {
		p.blocks[b.prev].next = b.next
	} else {
		p.head = b.next
	}
	if b.next >= 0 {
		p.blocks[b.next].prev = b.prev
	} else {
		p.tail = b.prev
	}
	b.prev, b.next, b.inFree = -1, -1, false
	p.numFree--
}

// Allocate takes n free blocks, each with one reference, or returns false and takes none.
func (p *Pool) Allocate(n int, into []int32) ([]int32, bool) {
	if n > p.numFree {
		return into, false
	}
	for i := 0; i < n; i++ {
		id := p.head
		p.remove(id)
		b := &p.blocks[id]
		if b.Cached {
			delete(p.cached, b.Hash)
			b.Cached = false
			p.evictions++
		}
		b.Ref = 1
		into = append(into, id)
	}
	return into, true
}

// Lookup returns the cached block holding hash, if any.
func (p *Pool) Lookup(h BlockHash) (int32, bool) {
	id, ok := p.cached[h]
	return id, ok
}

// Touch adds a reference to a block found in the prefix cache, taking it out of the free queue
// when it had none.
func (p *Pool) Touch(id int32) {
	b := &p.blocks[id]
	if b.inFree {
		p.remove(id)
	}
	b.Ref++
}

// Register records a full block's hash in the prefix cache. A block whose contents are already
// cached under another block stays uncached (the first copy serves future hits).
func (p *Pool) Register(id int32, h BlockHash) {
	if !p.caching {
		return
	}
	b := &p.blocks[id]
	if b.Cached {
		return
	}
	if _, dup := p.cached[h]; dup {
		return
	}
	b.Hash, b.Cached = h, true
	p.cached[h] = id
}

// Free drops one reference from each block, in the order given; blocks that reach zero join the
// back of the free queue (callers pass a request's blocks in reverse so its tail is evicted first).
// Freeing a block that has no reference is an error and changes nothing for that block.
func (p *Pool) Free(ids []int32) error {
	var err error
	for _, id := range ids {
		if id < 0 || int(id) >= len(p.blocks) {
			err = fmt.Errorf("kvcache: freeing block %d outside the pool of %d", id, len(p.blocks))
			continue
		}
		b := &p.blocks[id]
		if b.Ref <= 0 {
			err = fmt.Errorf("kvcache: block %d freed with no reference", id)
			continue
		}
		b.Ref--
		if b.Ref == 0 {
			p.pushBack(id)
		}
	}
	return err
}

// ResetCache drops every prefix-cache entry (blocks in use keep their contents).
func (p *Pool) ResetCache() {
	for h, id := range p.cached {
		p.blocks[id].Cached = false
		delete(p.cached, h)
	}
}
