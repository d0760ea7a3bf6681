package loader

import (
	"errors"
	"fmt"
)

// ErrTensorNotFound is wrapped by the errors of File.Tensor and
// Checkpoint.Tensor when the requested name is absent, so that callers can
// tell an optional tensor (e.g. lm_head.weight of a tied model) from damage.
var ErrTensorNotFound = errors.New("tensor not found")

// ErrClosed is wrapped by the errors of methods called on a closed File or
// Checkpoint.
var ErrClosed = errors.New("file already closed")

// FormatError reports a malformed input file: a safetensors file, a shard
// index, a config or a projector. Path is the file, Tensor the tensor (or
// JSON field) concerned when there is one, Reason what is wrong.
type FormatError struct {
	Path   string
	Tensor string
	Reason string
}

// Error implements error.
func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("%s: tensor %q: %s", e.Path, e.Tensor, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Reason)
}

func formatErr(path, tensor, format string, args ...any) error {
	return &FormatError{Path: path, Tensor: tensor, Reason: fmt.Sprintf(format, args...)}
}

// joinErrs is errors.Join with "; " between the messages, so that a list of
// problems stays on one line; nil when errs is empty.
func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return &multiError{errs}
}

type multiError struct{ errs []error }

func (m *multiError) Error() string {
	s := ""
	for i, e := range m.errs {
		if i > 0 {
			s += "; "
		}
		s += e.Error()
	}
	return s
}

func (m *multiError) Unwrap() []error { return m.errs }
