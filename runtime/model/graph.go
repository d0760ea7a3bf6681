package model

import (
	"math/bits"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// Decode steps on a Grapher backend run as recorded graphs, one per (batch bucket, context
// bucket): the batch is padded to the next power-of-two number of sequences with dummy
// sequences whose one token writes into a reserved trash block, and the attention launch is
// sized for the next power-of-two context. Inputs are uploaded into the fixed step buffers
// before each replay.

// maxGraphBatch is the largest batch that runs as a graph; larger decodes run op by op.
const maxGraphBatch = 256

// graphable reports whether a batch is a plain decode: one token per sequence, no images, and
// the logits of every row in row order.
func (m *Model) graphable(bt *Batch, maxQ int) bool {
	if m.trash < 0 || maxQ != 1 || len(bt.Seqs) > maxGraphBatch || len(bt.VisualIdx) > 0 ||
		len(bt.DeepStackIdx) > 0 || len(bt.CustomIdx) > 0 || len(bt.LogitRows) != len(bt.Tokens) {
		return false
	}
	for i, r := range bt.LogitRows {
		if int(r) != i {
			return false
		}
	}
	return true
}

// pow2 is the smallest power of two ≥ max(n, lo).
func pow2(n, lo int) int {
	n = max(n, lo)
	return 1 << bits.Len(uint(n-1))
}

// stepGraph pads a decode batch to its bucket, uploads it and replays (capturing on first use)
// the bucket's graph.
func (m *Model) stepGraph(g ml.Grapher, bt *Batch, maxCtx int) (ml.Tensor, int, error) {
	b := len(bt.Seqs)
	bp := pow2(b, 1)
	ctx := pow2(maxCtx, m.layout.BlockSize)
	pb := &m.padded
	pb.Tokens = append(pb.Tokens[:0], bt.Tokens...)
	pb.Pos = append(pb.Pos[:0], bt.Pos...)
	pb.Slots = append(pb.Slots[:0], bt.Slots...)
	pb.Seqs = append(pb.Seqs[:0], bt.Seqs...)
	pb.LogitRows = pb.LogitRows[:0]
	trash := []int32{int32(m.trash)}
	for i := b; i < bp; i++ {
		pb.Tokens = append(pb.Tokens, 0)
		pb.Pos = append(pb.Pos, 0, 0, 0)
		pb.Slots = append(pb.Slots, int32(m.trash*m.layout.BlockSize))
		pb.Seqs = append(pb.Seqs, Seq{QueryLen: 1, CtxLen: 1, Blocks: trash})
	}
	for i := 0; i < bp; i++ {
		pb.LogitRows = append(pb.LogitRows, int32(i))
	}
	if err := m.ensure(pb, ctx/m.layout.BlockSize); err != nil {
		return nil, 0, err
	}
	if err := m.upload(pb); err != nil {
		return nil, 0, err
	}
	key := uint64(bp)<<32 | uint64(ctx)
	if !g.HasGraph(key) {
		sh := shape{n: bp, nb: bp, r: bp, maxQ: 1, maxCtx: ctx}
		if err := g.Capture(key, func() error { return m.launch(sh) }); err != nil {
			return nil, 0, err
		}
		m.captures++
	}
	if err := g.Replay(key); err != nil {
		return nil, 0, err
	}
	m.replays++
	return m.b.Rows(m.s.logits, b), b, nil
}

// GraphStats returns how many decode graphs were captured and replayed.
func (m *Model) GraphStats() (captures, replays int64) { return m.captures, m.replays }
