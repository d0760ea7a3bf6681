// Package store is qvl's embedding store: an immutable file of precomputed image embeddings,
// each under a string id, that the server memory-maps and finds by id in O(1).
//
// An item is one of two kinds:
//   - KindEmbedding: a proprietary embedding vector [D] that the loaded projector maps to tokens;
//   - KindImageEmbeds: Qwen3-VL post-merger embeddings [tokens, H] with their DeepStack features
//     (levels × [tokens, H]) and the pre-merge image_grid_thw (tokens = t·h·w/4).
//
// # File layout (version 1, little-endian)
//
//	offset 0    header, 128 bytes:
//	              [8]byte magic "QVLSTORE", u32 version, u32 flags (0), u64 count,
//	              u64 metaOff, u64 metaLen, u64 dataOff, u64 dataLen,
//	              u64 recordsOff, u64 tableOff, u64 tableSlots, u64 idsOff, u64 idsLen,
//	              u64 fileSize, 24 reserved zero bytes
//
// and then these sections, in this order:
//
//	data        item data from offset 128, each item 64-byte aligned, planar: the embeddings
//	            [tokens, cols] then each DeepStack level [tokens, cols], in the item's dtype
//	            (F32 or BF16)
//	records     count records of 64 bytes (8-byte aligned):
//	              u64 data offset (from dataOff), u64 data bytes, u64 id offset (from idsOff),
//	              u32 id bytes, u8 kind, u8 dtype (loader.DType), u16 DeepStack levels,
//	              u32 tokens, u32 cols, u32 t, u32 h, u32 w, u32 reserved, u64 FNV-1a hash of the id
//	table       an open-addressing hash table of tableSlots (a power of two, more than count)
//	            u32 slots: 0 is empty, r is record r-1; an id hashes to slot hash & (slots-1) and
//	            probes linearly
//	ids         the ids' UTF-8 bytes, back to back
//	meta        the metadata as JSON (Meta)
//
// Data sections are aligned so that F32 items can be read in place, without a copy, on
// little-endian hosts. Files are written once (Writer) and renamed into place, so a reader never
// sees a partial file; to change a store, write a new one and swap it in.
package store

import (
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/qvl-dev/qvl/loader"
)

// Magic opens every store file.
const Magic = "QVLSTORE"

// Version is the format version this package reads and writes.
const Version = 1

// FileExt is the conventional file name extension of a store.
const FileExt = ".qvlstore"

const (
	headerSize = 128
	recordSize = 64
	dataAlign  = 64
	// MaxIDBytes is the longest id accepted.
	MaxIDBytes = 1024
	// maxDim bounds tokens and cols of one item.
	maxDim = 1 << 30
)

// Kind is the kind of a store item.
type Kind uint8

// Item kinds.
const (
	// KindEmbedding is a proprietary embedding vector that the loaded projector maps to tokens.
	KindEmbedding Kind = 1
	// KindImageEmbeds is Qwen3-VL post-merger embeddings with DeepStack features and a grid.
	KindImageEmbeds Kind = 2
)

// String returns the kind's name as the API spells it ("embedding", "image_embeds").
func (k Kind) String() string {
	switch k {
	case KindEmbedding:
		return "embedding"
	case KindImageEmbeds:
		return "image_embeds"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Meta describes a store as a whole; it is stored as JSON in the file.
type Meta struct {
	// UUID is drawn at random when the store is written: two stores never share it, so caches
	// keyed by (UUID, id) never mix versions.
	UUID string `json:"uuid"`
	// Created is when the store was written (RFC 3339).
	Created string `json:"created"`
	// Source describes where the data came from (free text).
	Source string `json:"source,omitempty"`
	// EmbeddingDim is the size D of every KindEmbedding item (0 when there are none).
	EmbeddingDim int `json:"embedding_dim"`
	// HiddenSize is the hidden size H of every KindImageEmbeds item (0 when there are none).
	HiddenSize int `json:"hidden_size"`
	// DeepStackLevels is the number of DeepStack levels of every KindImageEmbeds item.
	DeepStackLevels int `json:"deepstack_levels"`
	// Embeddings and ImageEmbeds count the items of each kind.
	Embeddings  int `json:"embeddings"`
	ImageEmbeds int `json:"image_embeds"`
}

// ErrNotFound is returned (wrapped) by Lookup for an id the store does not hold.
var ErrNotFound = errors.New("no such id in the embedding store")

// FormatError reports a malformed store file.
type FormatError struct {
	Path   string
	Reason string
}

// Error implements error.
func (e *FormatError) Error() string { return fmt.Sprintf("embedding store %s: %s", e.Path, e.Reason) }

func formatErr(path, format string, args ...any) error {
	return &FormatError{Path: path, Reason: fmt.Sprintf(format, args...)}
}

// hashID is the FNV-1a 64-bit hash of an id.
func hashID(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

// checkDType accepts the dtypes items may be stored in.
func checkDType(d loader.DType) error {
	if d != loader.F32 && d != loader.BF16 {
		return fmt.Errorf("items are stored as F32 or BF16, not %s", d)
	}
	return nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }
