package engine

import "strings"

// Detokenizer turns a request's tokens into text incrementally, never splitting a UTF-8
// character (tokenizer.Decoder implements it).
type Detokenizer interface {
	Add(id int) string
	Flush() string
}

// textState builds a request's output text and finds stop strings in it, across token
// boundaries. Text that could still become a stop string is held back until it cannot.
type textState struct {
	dec     Detokenizer
	stops   []string
	out     strings.Builder
	emitted int // bytes of out already emitted
}

// push adds a token's text and returns what may be emitted now, and whether a stop string was
// found (then the text before it is returned and nothing after it is ever emitted).
func (t *textState) push(id int, checkStops bool) (string, bool) {
	if t.dec == nil {
		return "", false
	}
	t.out.WriteString(t.dec.Add(id))
	return t.release(checkStops, false)
}

// finish flushes the decoder and returns the rest of the text.
func (t *textState) finish() string {
	if t.dec == nil {
		return ""
	}
	t.out.WriteString(t.dec.Flush())
	s, _ := t.release(false, true)
	return s
}

func (t *textState) release(checkStops, all bool) (string, bool) {
	s := t.out.String()
	if checkStops {
		// A stop string ends after the emitted text, so it starts at most len(stop)-1 bytes before it.
		best := -1
		for _, stop := range t.stops {
			from := max(0, t.emitted-len(stop)+1)
			if i := strings.Index(s[from:], stop); i >= 0 && (best < 0 || from+i < best) {
				best = from + i
			}
		}
		if best >= 0 {
			out := s[t.emitted:max(best, t.emitted)]
			t.emitted = len(s)
			return out, true
		}
	}
	end := len(s)
	if !all {
		// Hold back the longest tail that is a prefix of a stop string.
		for _, stop := range t.stops {
			for k := min(len(stop)-1, len(s)-t.emitted); k > 0; k-- {
				if strings.HasSuffix(s, stop[:k]) {
					end = min(end, len(s)-k)
					break
				}
			}
		}
	}
	out := s[t.emitted:end]
	t.emitted = end
	return out, false
}
