// Package opprof writes the time a backend spent in each op or kernel (ml.Profiler) in the pprof
// profile format, so that `go tool pprof -top FILE` lists ops by time the way it lists Go
// functions: sample types "time" (nanoseconds, the default) and "calls" (count), one location
// (and function) per op name, and labels that say which part of a benchmark a sample belongs
// to (e.g. phase=decode batch=8), so `-tagfocus phase=decode` selects one.
package opprof

import (
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/google/pprof/profile"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// Sample is the time of one op within one labelled part of a run.
type Sample struct {
	Op     string
	Calls  int64
	Total  time.Duration
	Labels map[string]string
}

// FromOpTimes turns a backend's op times into samples that all carry labels.
func FromOpTimes(ops []ml.OpTime, labels map[string]string) []Sample {
	out := make([]Sample, 0, len(ops))
	for _, o := range ops {
		l := make(map[string]string, len(labels))
		for k, v := range labels {
			l[k] = v
		}
		out = append(out, Sample{Op: o.Name, Calls: o.Calls, Total: o.Total, Labels: l})
	}
	return out
}

// Build makes a profile of the samples. wall is the wall-clock time the samples were taken over
// (the profile's duration; 0 when unknown); comments are shown by `go tool pprof -comments`.
func Build(samples []Sample, wall time.Duration, comments ...string) (*profile.Profile, error) {
	p := &profile.Profile{
		SampleType:        []*profile.ValueType{{Type: "time", Unit: "nanoseconds"}, {Type: "calls", Unit: "count"}},
		DefaultSampleType: "time",
		PeriodType:        &profile.ValueType{Type: "time", Unit: "nanoseconds"},
		Period:            1,
		TimeNanos:         time.Now().UnixNano(),
		DurationNanos:     wall.Nanoseconds(),
		Comments:          comments,
	}
	locs := map[string]*profile.Location{}
	names := make([]string, 0)
	for _, s := range samples {
		if s.Op == "" {
			return nil, fmt.Errorf("opprof: a sample has no op name")
		}
		if s.Total < 0 || s.Calls < 0 {
			return nil, fmt.Errorf("opprof: op %s has negative time %v or calls %d", s.Op, s.Total, s.Calls)
		}
		if _, ok := locs[s.Op]; !ok {
			locs[s.Op] = nil
			names = append(names, s.Op)
		}
	}
	sort.Strings(names)
	for i, n := range names {
		f := &profile.Function{ID: uint64(i + 1), Name: n, SystemName: n}
		l := &profile.Location{ID: uint64(i + 1), Line: []profile.Line{{Function: f}}}
		p.Function = append(p.Function, f)
		p.Location = append(p.Location, l)
		locs[n] = l
	}
	for _, s := range samples {
		ps := &profile.Sample{Location: []*profile.Location{locs[s.Op]}, Value: []int64{s.Total.Nanoseconds(), s.Calls}}
		if len(s.Labels) > 0 {
			ps.Label = map[string][]string{}
			for k, v := range s.Labels {
				ps.Label[k] = []string{v}
			}
		}
		p.Sample = append(p.Sample, ps)
	}
	if err := p.CheckValid(); err != nil {
		return nil, fmt.Errorf("opprof: %w", err)
	}
	return p, nil
}

// Write builds the profile and writes it gzip-compressed to w.
func Write(w io.Writer, samples []Sample, wall time.Duration, comments ...string) error {
	p, err := Build(samples, wall, comments...)
	if err != nil {
		return err
	}
	return p.Write(w)
}
