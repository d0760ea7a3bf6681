package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/qvl-dev/qvl/bench/offline"
)

// Kinds of result file that Compare reads.
const (
	// KindGPU is runtime/cuda TestGPUBenchmark's report (GPUReport).
	KindGPU = "gpu"
	// KindOffline is `qvl bench offline`'s report (offline.Report).
	KindOffline = "offline"
)

// Missing is what a comparison shows for a workload that a file does not have.
const Missing = "—"

// Row is one measurement of a result file: a workload, its value and the value's unit.
type Row struct {
	Workload string
	Value    float64
	Unit     string
}

// ResultFile is a benchmark result file read as rows of measurements, for Compare.
type ResultFile struct {
	// Path is the file as given; Kind is KindGPU or KindOffline.
	Path string
	Kind string
	// Where names the device or machine the numbers come from (the GPU report's device; the
	// offline report's backend and host), to tell when files of different machines are compared.
	Where string
	// About is a one-line description: where, when and at which commit.
	About string
	// Rows are the measurements in the file's order; a workload name that repeats within the
	// file gets " #2", " #3", ... so that every row has its own name.
	Rows []Row
}

// ReadResultFile reads a GPU (kind "gpu") or offline (kind "offline") result file as rows.
// GPU rows are the report's rows as they are; an offline report gives, per decode batch, the
// TPOT, the p99 step time and the tokens/s, and per prefill case the median time and the
// tokens/s. Errors name the file and what was found in it.
func ReadResultFile(path string) (*ResultFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var head struct {
		Kind    string `json:"kind"`
		Date    string `json:"date"`
		Backend string `json:"backend"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%s: not a result file (JSON): %w", path, err)
	}
	f := &ResultFile{Path: path, Kind: head.Kind}
	switch head.Kind {
	case KindGPU:
		var r GPUReport
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: GPU report: %w", path, err)
		}
		if r.Device == "" || len(r.Results) == 0 {
			return nil, fmt.Errorf("%s: a GPU report without a device or results", path)
		}
		f.Where = r.Device
		f.About = fmt.Sprintf("%s; %s; commit %s", r.Device, or(r.Time, "time unknown"), or(r.Commit, "unknown"))
		for _, x := range r.Results {
			f.Rows = append(f.Rows, Row{Workload: x.Workload, Value: x.Value, Unit: x.Unit})
		}
	case KindOffline:
		var r offline.Report
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: offline report: %w", path, err)
		}
		if len(r.Decode) == 0 && len(r.Prefill) == 0 {
			return nil, fmt.Errorf("%s: an offline report without decode or prefill results", path)
		}
		f.Where = r.Backend + " on " + r.Machine.Host
		f.About = fmt.Sprintf("%s on %s, %s (%s); %s; commit %s", r.Model, r.Backend, r.Machine.Host, r.Machine.CPU,
			or(r.Date, "date unknown"), or(r.Machine.Commit, "unknown"))
		for _, d := range r.Decode {
			name := fmt.Sprintf("decode batch %d, context %d", d.Batch, d.Context)
			f.Rows = append(f.Rows,
				Row{Workload: name + ": TPOT", Value: d.TPOTMs, Unit: "ms"},
				Row{Workload: name + ": p99 step", Value: d.P99StepMs, Unit: "ms"},
				Row{Workload: name + ": tokens/s", Value: d.TokensPerS, Unit: "tok/s"})
		}
		for _, p := range r.Prefill {
			name := fmt.Sprintf("prefill %d × %d", p.Seqs, p.Len)
			f.Rows = append(f.Rows,
				Row{Workload: name + ": time", Value: p.MedianMs, Unit: "ms"},
				Row{Workload: name + ": tokens/s", Value: p.TokensPerS, Unit: "tok/s"})
		}
	case "":
		if head.Date != "" && head.Backend != "" {
			return nil, fmt.Errorf("%s: a `qvl bench serve` result (no kind); compare reads %q and %q result files", path, KindGPU, KindOffline)
		}
		return nil, fmt.Errorf("%s: not a result file (no \"kind\"; want %q or %q)", path, KindGPU, KindOffline)
	default:
		return nil, fmt.Errorf("%s: not a result file compare reads (kind %q; want %q or %q)", path, head.Kind, KindGPU, KindOffline)
	}
	seen := map[string]int{}
	for i, r := range f.Rows {
		key := strings.TrimSpace(r.Workload)
		seen[key]++
		if n := seen[key]; n > 1 {
			f.Rows[i].Workload = fmt.Sprintf("%s #%d", r.Workload, n)
		}
	}
	return f, nil
}

// Direction says whether a smaller or a larger value of a unit is the better one.
type Direction int

const (
	// DirectionUnknown is a unit whose better direction is not known (only the change is shown).
	DirectionUnknown Direction = iota
	// LowerIsBetter is a time (ms, µs, ms/tok) or a ratio (fused / cuBLAS).
	LowerIsBetter
	// HigherIsBetter is a rate (tok/s, req/s, GB/s).
	HigherIsBetter
)

// timeUnits are the units of time a unit string may start or end with.
var timeUnits = map[string]bool{"ns": true, "µs": true, "μs": true, "us": true, "ms": true, "s": true, "sec": true,
	"min": true, "h": true}

// UnitDirection decides from a unit string which way is better: a time per something ("ms",
// "µs", "ms/tok") is better lower, as is a ratio (a unit that mentions "ratio"); something per
// unit of time ("tok/s", "req/s", "GB/s") is better higher; anything else is unknown.
func UnitDirection(unit string) Direction {
	u := strings.ToLower(strings.TrimSpace(unit))
	if strings.Contains(u, "ratio") {
		return LowerIsBetter
	}
	num, den, per := strings.Cut(u, "/")
	num, den = strings.TrimSpace(num), strings.TrimSpace(den)
	switch {
	case timeUnits[num]:
		return LowerIsBetter
	case per && timeUnits[den]:
		return HigherIsBetter
	}
	return DirectionUnknown
}

// CompareOptions tune Compare.
type CompareOptions struct {
	// Names are the columns' names, one per file; empty means the file names without .json.
	Names []string
	// Only keeps the workloads whose name (leading spaces trimmed) it matches; nil keeps all.
	Only *regexp.Regexp
	// Threshold is the change in percent below which a known direction reads "same" rather than
	// "better" or "worse"; 0 gives every change a word.
	Threshold float64
}

// Cell is one file's value of one workload in a Comparison.
type Cell struct {
	// Present is false when the file has no such workload.
	Present bool
	Value   float64
	// Unit is the file's unit for the workload (it may differ from the row's, and then there
	// is no change).
	Unit string
	// HasChange says ChangePct is set: (value − base) / |base| in percent; the base cell and
	// cells without a base value, with a zero base or with another unit have none.
	HasChange bool
	ChangePct float64
	// Verdict is "better", "worse", "same" (within the threshold) or "" (no change or an
	// unknown direction).
	Verdict string
}

// CompareRow is one workload across the files.
type CompareRow struct {
	// Workload is the name as the first file that has it writes it (leading spaces kept: the
	// GPU report indents the parts of a workload).
	Workload string
	Unit     string
	// Cells has one cell per file; Cells[0] is the base.
	Cells []Cell
}

// Comparison is result files side by side, the first being the base the others are compared with.
type Comparison struct {
	Names []string
	Files []*ResultFile
	// Rows are the base's workloads in its order, then those only the other files have, in the
	// order they first appear.
	Rows []CompareRow
}

// Compare matches the rows of files (two or more, of one kind) by workload name and computes
// each other file's change against the first.
func Compare(files []*ResultFile, opts CompareOptions) (*Comparison, error) {
	if len(files) < 2 {
		return nil, fmt.Errorf("compare needs a base file and at least one other, got %d file(s)", len(files))
	}
	for _, f := range files[1:] {
		if f.Kind != files[0].Kind {
			return nil, fmt.Errorf("%s is a result file of kind %q but the base %s is of kind %q: compare files of one kind", f.Path, f.Kind, files[0].Path, files[0].Kind)
		}
	}
	names := opts.Names
	if len(names) == 0 {
		for _, f := range files {
			names = append(names, strings.TrimSuffix(filepath.Base(f.Path), ".json"))
		}
	} else if len(names) != len(files) {
		return nil, fmt.Errorf("%d names (%s) for %d files", len(names), strings.Join(names, ","), len(files))
	}
	if opts.Threshold < 0 || math.IsNaN(opts.Threshold) {
		return nil, fmt.Errorf("the threshold must be a percentage ≥ 0, got %v", opts.Threshold)
	}
	c := &Comparison{Names: names, Files: files}
	index := map[string]int{}
	total := 0
	for fi, f := range files {
		for _, r := range f.Rows {
			key := strings.TrimSpace(r.Workload)
			if fi == 0 {
				total++
			}
			if opts.Only != nil && !opts.Only.MatchString(key) {
				continue
			}
			i, ok := index[key]
			if !ok {
				i = len(c.Rows)
				index[key] = i
				c.Rows = append(c.Rows, CompareRow{Workload: r.Workload, Unit: r.Unit, Cells: make([]Cell, len(files))})
			}
			c.Rows[i].Cells[fi] = Cell{Present: true, Value: r.Value, Unit: r.Unit}
		}
	}
	if len(c.Rows) == 0 {
		if opts.Only != nil {
			return nil, fmt.Errorf("--only %q matches none of the %d workloads of %s", opts.Only, total, files[0].Path)
		}
		return nil, errors.New("the files have no rows")
	}
	for i := range c.Rows {
		row := &c.Rows[i]
		base := row.Cells[0]
		dir := UnitDirection(row.Unit)
		for j := 1; j < len(row.Cells); j++ {
			cell := &row.Cells[j]
			if !cell.Present || !base.Present || cell.Unit != base.Unit {
				continue
			}
			diff := cell.Value - base.Value
			if base.Value != 0 {
				cell.HasChange = true
				cell.ChangePct = 100 * diff / math.Abs(base.Value)
			}
			switch {
			case dir == DirectionUnknown:
			case diff == 0 || (cell.HasChange && math.Abs(cell.ChangePct) < opts.Threshold):
				cell.Verdict = "same"
			case (diff < 0) == (dir == LowerIsBetter):
				cell.Verdict = "better"
			default:
				cell.Verdict = "worse"
			}
		}
	}
	return c, nil
}

// notes are the lines that say what each column is and warn when the machines differ.
func (c *Comparison) notes() (about []string, warning string) {
	for i, f := range c.Files {
		about = append(about, fmt.Sprintf("%s = %s: %s", c.Names[i], f.Path, f.About))
		if f.Where != c.Files[0].Where && warning == "" {
			warning = fmt.Sprintf("%s ran on %s, the base on %s: the changes compare machines, not only code", c.Names[i], f.Where, c.Files[0].Where)
		}
	}
	return about, warning
}

// change formats a cell's change: "+4.0%", or "" without one.
func (cell Cell) change() string {
	if !cell.HasChange {
		return ""
	}
	return fmt.Sprintf("%+.1f%%", cell.ChangePct)
}

// value formats a cell's value, with its unit when it differs from the row's.
func (cell Cell) value(rowUnit string) string {
	if !cell.Present {
		return Missing
	}
	if cell.Unit != rowUnit {
		return gpuValue(cell.Value) + " " + cell.Unit
	}
	return gpuValue(cell.Value)
}

// WriteText writes the comparison as an aligned text table: workload, unit, the base's value,
// then for each other file its value, the change in percent and the verdict.
func (c *Comparison) WriteText(w io.Writer) error {
	p := &page{w: w}
	about, warning := c.notes()
	for _, a := range about {
		p.line("%s", a)
	}
	if warning != "" {
		p.line("note: %s", warning)
	}
	p.line("")
	header := []string{"workload", "unit", c.Names[0]}
	right := []bool{false, false, true}
	for _, n := range c.Names[1:] {
		header = append(header, n, "change", "")
		right = append(right, true, true, false)
	}
	table := [][]string{header}
	for _, r := range c.Rows {
		line := []string{r.Workload, r.Unit, r.Cells[0].value(r.Unit)}
		for _, cell := range r.Cells[1:] {
			line = append(line, cell.value(r.Unit), cell.change(), cell.Verdict)
		}
		table = append(table, line)
	}
	widths := make([]int, len(header))
	for _, line := range table {
		for i, s := range line {
			widths[i] = max(widths[i], utf8.RuneCountInString(s))
		}
	}
	for _, line := range table {
		var b strings.Builder
		for i, s := range line {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(s))
			if right[i] {
				b.WriteString(pad + s)
			} else {
				b.WriteString(s + pad)
			}
		}
		p.line("%s", strings.TrimRight(b.String(), " "))
	}
	return p.err
}

// WriteMarkdown writes the comparison as a markdown table (for docs/perf-log.md): one column
// per file, the others' cells reading "value (+4.0%, better)".
func (c *Comparison) WriteMarkdown(w io.Writer) error {
	p := &page{w: w}
	about, warning := c.notes()
	for _, a := range about {
		p.line("- %s", mdEscape(a))
	}
	if warning != "" {
		p.line("- note: %s", mdEscape(warning))
	}
	p.line("")
	p.line("| workload | unit | %s |", strings.Join(mdEscapeAll(c.Names), " | "))
	p.line("|---|---|%s", strings.Repeat("---:|", len(c.Names)))
	for _, r := range c.Rows {
		cells := []string{r.Cells[0].value(r.Unit)}
		for _, cell := range r.Cells[1:] {
			s := cell.value(r.Unit)
			var extra []string
			if ch := cell.change(); ch != "" {
				extra = append(extra, ch)
			}
			if cell.Verdict != "" {
				extra = append(extra, cell.Verdict)
			}
			if len(extra) > 0 {
				s += " (" + strings.Join(extra, ", ") + ")"
			}
			cells = append(cells, s)
		}
		p.line("| %s | %s | %s |", mdEscape(strings.TrimSpace(r.Workload)), mdEscape(r.Unit), strings.Join(mdEscapeAll(cells), " | "))
	}
	return p.err
}

// mdEscape keeps a table cell's pipes from ending the cell.
func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func mdEscapeAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = mdEscape(s)
	}
	return out
}
