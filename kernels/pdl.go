package kernels

import (
	"bytes"
	"fmt"
)

// pdlWait is the instruction every entry of the PDL build executes before it touches memory
// that earlier work on the stream writes (common.cuh's QVL_PDL_ENTER).
const pdlWait = "griddepcontrol.wait;"

// PDLModules returns the build of every module for programmatic dependent launch
// (kernels/pdl/X.ptx: compute_90, QVL_PDL defined, so that each kernel's QVL_PDL_ENTER() is
// griddepcontrol.launch_dependents and griddepcontrol.wait), sorted by name: the same modules
// with the same entries as Modules. A kernel launched with programmatic stream serialization
// may start before the one ahead of it finishes, so PDLModules fails rather than return a
// module in which an entry does not wait (it names the entry), or one whose entries differ
// from the default build's.
func PDLModules() ([]Module, error) {
	def, err := Modules()
	if err != nil {
		return nil, err
	}
	pdl, err := modules("pdl/*.ptx")
	if err != nil {
		return nil, err
	}
	if len(pdl) != len(def) {
		return nil, fmt.Errorf("kernels: %d modules in pdl/ for %d default ones (rebuild with make kernels)", len(pdl), len(def))
	}
	for i, m := range pdl {
		if m.Name != def[i].Name {
			return nil, fmt.Errorf("kernels: pdl/%s.ptx where pdl/%s.ptx was expected (rebuild with make kernels)", m.Name, def[i].Name)
		}
		if err := sameEntries(def[i], m); err != nil {
			return nil, err
		}
		if err := everyEntryWaits(m); err != nil {
			return nil, err
		}
	}
	return pdl, nil
}

// sameEntries checks that the PDL build p of module m has m's kernels with m's parameters.
func sameEntries(m, p Module) error {
	me, err := Entries(m.PTX)
	if err != nil {
		return err
	}
	pe, err := Entries(p.PTX)
	if err != nil {
		return err
	}
	if len(me) != len(pe) {
		return fmt.Errorf("kernels: pdl/%s.ptx has %d kernels, %s.ptx %d (rebuild with make kernels)", m.Name, len(pe), m.Name, len(me))
	}
	for i := range me {
		if me[i].Name != pe[i].Name || fmt.Sprint(me[i].Params) != fmt.Sprint(pe[i].Params) {
			return fmt.Errorf("kernels: pdl/%s.ptx's kernel %d is %s%v, %s.ptx's %s%v (rebuild with make kernels)",
				m.Name, i, pe[i].Name, pe[i].Params, m.Name, me[i].Name, me[i].Params)
		}
	}
	return nil
}

// everyEntryWaits checks that the text of each .entry of m, up to the next one, executes
// griddepcontrol.wait.
func everyEntryWaits(m Module) error {
	entries, err := Entries(m.PTX)
	if err != nil {
		return err
	}
	text := m.PTX
	for i, e := range entries {
		start := bytes.Index(text, []byte(".entry "+e.Name+"("))
		if start < 0 {
			return fmt.Errorf("kernels: pdl/%s.ptx: entry %s not found", m.Name, e.Name)
		}
		body := text[start:]
		if i+1 < len(entries) {
			if end := bytes.Index(body, []byte(".entry "+entries[i+1].Name+"(")); end >= 0 {
				body = body[:end]
			}
		}
		if !bytes.Contains(body, []byte(pdlWait)) {
			return fmt.Errorf("kernels: pdl/%s.ptx: kernel %s does not start with QVL_PDL_ENTER() (no %s): "+
				"under programmatic dependent launch it could race with the kernel before it", m.Name, e.Name, pdlWait)
		}
		text = text[start+1:]
	}
	return nil
}
