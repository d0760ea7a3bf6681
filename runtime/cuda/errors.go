package cuda

import (
	"errors"
	"fmt"
	"strings"
)

// ErrDeviceCheck is wrapped by the errors that Sync and Read return when a kernel found a bad
// index on the device (a token outside the vocabulary, a cache slot outside the cache, ...).
// The kernels skip such elements instead of touching memory out of bounds, so the backend
// stays usable, but the outputs of the step are not to be trusted.
var ErrDeviceCheck = errors.New("device-side check failed")

// errCodes names the flags of kernels/common.cuh (QVL_ERR_*), by index.
var errCodes = []string{
	0: "EmbedProject: a token id is outside the embedding table",
	1: "EmbedProject: a visual_idx entry is outside the step's rows",
	2: "EmbedProject: a custom_idx entry is outside the step's rows",
	3: "EmbedProject: a custom_src entry is outside [0, custom embeddings × K)",
	4: "QKV: a cache slot is outside the cache",
	5: "Attention: seq_start and ctx_len do not fit the query rows and the block table",
	6: "Attention: a block table entry is outside the cache",
	7: "Gather/ScatterAdd: a row index is outside x",
	8: "TopK/Sample: bad per-row parameters",
}

// deviceCheckError describes the raised flags.
func deviceCheckError(codes []uint32) error {
	msgs := make([]string, 0, len(codes))
	for _, c := range codes {
		if int(c) < len(errCodes) && errCodes[c] != "" {
			msgs = append(msgs, errCodes[c])
		} else {
			msgs = append(msgs, fmt.Sprintf("unknown flag %d", c))
		}
	}
	return fmt.Errorf("cuda: %w: %s", ErrDeviceCheck, strings.Join(msgs, "; "))
}
