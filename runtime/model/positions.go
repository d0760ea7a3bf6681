package model

import "fmt"

// ImageSpan marks a run of image-pad tokens in a prompt: Tokens consecutive tokens starting at
// Start, laid out as a merged grid (T, H, W) with T*H*W == Tokens. For Qwen3-VL images the merged
// grid is the pre-merge image_grid_thw with h and w divided by the spatial merge size; a custom
// embedding projected to K tokens takes the grid (1, 1, K).
type ImageSpan struct {
	Start int
	Grid  [3]int
}

// Tokens is the number of tokens the span covers.
func (s ImageSpan) Tokens() int { return s.Grid[0] * s.Grid[1] * s.Grid[2] }

// MergedGrid converts a pre-merge image_grid_thw into the merged grid that positions use.
func MergedGrid(thw [3]int, merge int) ([3]int, error) {
	if merge <= 0 {
		return [3]int{}, fmt.Errorf("spatial merge size %d must be positive", merge)
	}
	if thw[0] <= 0 || thw[1] <= 0 || thw[2] <= 0 {
		return [3]int{}, fmt.Errorf("image_grid_thw %v: every entry must be positive", thw)
	}
	if thw[1]%merge != 0 || thw[2]%merge != 0 {
		return [3]int{}, fmt.Errorf("image_grid_thw %v: h and w must be multiples of the merge size %d", thw, merge)
	}
	return [3]int{thw[0], thw[1] / merge, thw[2] / merge}, nil
}

// Positions computes Qwen3-VL's (t, h, w) rotary positions of an n-token prompt with the given
// image spans (sorted by Start, not overlapping). Text tokens take equal t=h=w, counting up by one;
// an image span starting at next position q puts token (a, r, c) of its merged grid at
// (q+a, q+r, q+c) in row-major order, and the text after it continues at q + max(T, H, W).
//
// It returns the positions token-major (pos[3*i+a] is axis a of token i), and the rope
// delta: a token at cache index i ≥ n (decode) has all three positions equal to i + delta.
func Positions(n int, spans []ImageSpan) (pos []int32, delta int, err error) {
	pos = make([]int32, 3*n)
	next, i := 0, 0
	for k, s := range spans {
		if s.Start < i || s.Start+s.Tokens() > n || s.Tokens() <= 0 {
			return nil, 0, fmt.Errorf("image %d: span of %d tokens at %d does not fit a %d-token prompt after position %d", k, s.Tokens(), s.Start, n, i)
		}
		for ; i < s.Start; i++ {
			pos[3*i], pos[3*i+1], pos[3*i+2] = int32(next), int32(next), int32(next)
			next++
		}
		for a := 0; a < s.Grid[0]; a++ {
			for r := 0; r < s.Grid[1]; r++ {
				for c := 0; c < s.Grid[2]; c++ {
					pos[3*i], pos[3*i+1], pos[3*i+2] = int32(next+a), int32(next+r), int32(next+c)
					i++
				}
			}
		}
		next += max(s.Grid[0], s.Grid[1], s.Grid[2])
	}
	for ; i < n; i++ {
		pos[3*i], pos[3*i+1], pos[3*i+2] = int32(next), int32(next), int32(next)
		next++
	}
	return pos, next - n, nil
}
