package kvcache

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
)

// Content is what the manager needs to know about a request's tokens to hash its blocks.
type Content interface {
	// Tokens are the request's token ids so far (prompt, then output).
	Tokens() []int32
	// HashExtra writes into h whatever besides the token ids identifies tokens [start, end): for
	// image rows, the image's content hash and the rows' offsets in the image. Text writes nothing.
	HashExtra(h hash.Hash, start, end int)
}

// Seq is one request's view of the cache: its block table and the hashes of its full blocks.
type Seq struct {
	// Blocks is the block table: logical block i of the request lives in physical block Blocks[i].
	Blocks []int32
	// hashes[i] is the content hash of full block i (computed lazily, kept across preemption).
	hashes []BlockHash
	// registered counts the leading blocks already offered to the prefix cache.
	registered int
}

// Manager hands out blocks to requests and finds shared prefixes.
type Manager struct {
	pool      *Pool
	blockSize int
	h         hash.Hash
	buf       []byte

	// Stats: prefix-cache lookups in tokens, and the tokens they found.
	queries, hits int64
}

// NewManager manages numBlocks blocks of blockSize tokens.
func NewManager(numBlocks, blockSize int, prefixCaching bool) (*Manager, error) {
	if blockSize <= 0 {
		return nil, fmt.Errorf("kvcache: block size must be positive, got %d", blockSize)
	}
	p, err := NewPool(numBlocks, prefixCaching)
	if err != nil {
		return nil, err
	}
	return &Manager{pool: p, blockSize: blockSize, h: sha256.New()}, nil
}

// Pool is the underlying block pool.
func (m *Manager) Pool() *Pool { return m.pool }

// BlockSize is the number of tokens per block.
func (m *Manager) BlockSize() int { return m.blockSize }

// PrefixStats returns the prefix-cache lookups and hits, in tokens.
func (m *Manager) PrefixStats() (queries, hits int64) { return m.queries, m.hits }

// hashes extends s.hashes to cover every full block of the first n tokens of c.
func (m *Manager) hashesUpTo(s *Seq, c Content, n int) {
	toks := c.Tokens()
	bs := m.blockSize
	for i := len(s.hashes); (i+1)*bs <= n; i++ {
		m.h.Reset()
		if i > 0 {
			m.h.Write(s.hashes[i-1][:])
		}
		m.buf = m.buf[:0]
		for _, t := range toks[i*bs : (i+1)*bs] {
			m.buf = binary.LittleEndian.AppendUint32(m.buf, uint32(t))
		}
		m.h.Write(m.buf)
		c.HashExtra(m.h, i*bs, (i+1)*bs)
		var bh BlockHash
		m.h.Sum(bh[:0])
		s.hashes = append(s.hashes, bh)
	}
}

// CachedPrefix finds the longest run of leading full blocks of c's first n tokens that the prefix
// cache holds. It never covers all n tokens: at least one is left to compute, so that the step
// that completes the prompt produces its logits. The blocks are not yet referenced: pass them to
// Allocate in the same scheduling step.
func (m *Manager) CachedPrefix(s *Seq, c Content, n int) (blocks []int32, tokens int) {
	if !m.pool.caching || n <= 1 {
		return nil, 0
	}
	m.hashesUpTo(s, c, n-1)
	for _, h := range s.hashes {
		id, ok := m.pool.Lookup(h)
		if !ok {
			break
		}
		blocks = append(blocks, id)
	}
	return blocks, len(blocks) * m.blockSize
}

// CountPrefix records one admitted request's prefix-cache lookup of queried tokens, hit of which
// were found (counted on admission only, so a request that waits is not counted twice).
func (m *Manager) CountPrefix(queried, hit int) {
	m.queries += int64(queried)
	m.hits += int64(hit)
}

// Allocate makes s's block table cover computed+newTokens tokens, first adopting cached (the
// result of CachedPrefix, when s holds no blocks yet), then taking fresh blocks. It returns false
// and changes nothing when the pool has too few free blocks.
func (m *Manager) Allocate(s *Seq, cached []int32, computed, newTokens int) bool {
	need := (computed + newTokens + m.blockSize - 1) / m.blockSize
	have := len(s.Blocks) + len(cached)
	fresh := max(need-have, 0)
	// Cached blocks that sit in the free queue count against the free blocks too.
	evictable := 0
	for _, id := range cached {
		if m.pool.Block(id).Ref == 0 {
			evictable++
		}
	}
	if fresh+evictable > m.pool.NumFree() {
		return false
	}
	for _, id := range cached {
		m.pool.Touch(id)
	}
	s.Blocks = append(s.Blocks, cached...)
	var ok bool
	s.Blocks, ok = m.pool.Allocate(fresh, s.Blocks)
	return ok
}

// Commit registers the full blocks among c's first computed tokens in the prefix cache; call it
// once their keys and values have been written.
func (m *Manager) Commit(s *Seq, c Content, computed int) {
	if !m.pool.caching {
		return
	}
	full := min(computed/m.blockSize, len(s.Blocks))
	if full <= s.registered {
		return
	}
	m.hashesUpTo(s, c, full*m.blockSize)
	for i := s.registered; i < full; i++ {
		m.pool.Register(s.Blocks[i], s.hashes[i])
	}
	s.registered = full
}

// Free releases s's blocks (its tail first into the free queue, so it is evicted first) and
// empties its block table; the hashes stay, to find the blocks again after a preemption.
func (m *Manager) Free(s *Seq) error {
	for i, j := 0, len(s.Blocks)-1; i < j; i, j = i+1, j-1 {
		s.Blocks[i], s.Blocks[j] = s.Blocks[j], s.Blocks[i]
	}
	err := m.pool.Free(s.Blocks)
	s.Blocks = s.Blocks[:0]
	s.registered = 0
	return err
}
