package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/qvl-dev/qvl/loader"
)

// npyArray is a NumPy .npy array held in memory (usually a file mapping): its element type,
// shape, and the raw bytes of its C-ordered data.
type npyArray struct {
	dtype loader.DType
	shape []int
	data  []byte
}

// npyDTypes maps the NumPy type strings qvl reads to element types (little-endian or
// byte-order-free ones only).
var npyDTypes = map[string]loader.DType{
	"<f4": loader.F32, "<f2": loader.F16, "<f8": loader.F64,
	"<i8": loader.I64, "<i4": loader.I32, "<i2": loader.I16, "|i1": loader.I8, "|u1": loader.U8,
}

// parseNPY reads the header of the .npy file held in data (format versions 1 to 3): the
// "descr", "fortran_order" and "shape" keys of its Python dict literal. Only C-ordered arrays of
// the npyDTypes are accepted.
func parseNPY(name string, data []byte) (*npyArray, error) {
	bad := func(format string, args ...any) (*npyArray, error) {
		return nil, fmt.Errorf("%s: not a readable .npy file: %s", name, fmt.Sprintf(format, args...))
	}
	if len(data) < 10 || string(data[:6]) != "\x93NUMPY" {
		return bad("missing the \\x93NUMPY magic")
	}
	var hlen, start int
	switch data[6] {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(data[8:])), 10
	case 2, 3:
		if len(data) < 12 {
			return bad("truncated header")
		}
		hlen, start = int(binary.LittleEndian.Uint32(data[8:])), 12
	default:
		return bad("format version %d.%d", data[6], data[7])
	}
	if hlen > len(data)-start {
		return bad("header of %d bytes runs past the end of the file", hlen)
	}
	fields, err := parsePyDict(string(data[start : start+hlen]))
	if err != nil {
		return bad("header: %v", err)
	}
	descr, ok := fields["descr"].(string)
	if !ok {
		return bad(`header has no "descr" string`)
	}
	dt, ok := npyDTypes[descr]
	if !ok {
		return bad("dtype %q is not supported (want one of <f4, <f2, <f8 for values, <i8, <i4 for grids)", descr)
	}
	if fo, ok := fields["fortran_order"].(bool); !ok || fo {
		return bad("arrays must be C-ordered (fortran_order False)")
	}
	shape, ok := fields["shape"].([]int)
	if !ok {
		return bad(`header has no "shape" tuple`)
	}
	n, ok := mulSizes(uint64(dt.Size()))
	for _, d := range shape {
		n, ok = mulSizes(n, uint64(d))
		if !ok {
			break
		}
	}
	body := data[start+hlen:]
	if !ok || n != uint64(len(body)) {
		return bad("shape %v of %s needs %d data bytes, the file has %d", shape, descr, n, len(body))
	}
	return &npyArray{dtype: dt, shape: shape, data: body}, nil
}

// parsePyDict parses the Python dict literal of a .npy header: string keys, and values that are
// strings, True/False, or tuples of non-negative integers.
func parsePyDict(s string) (map[string]any, error) {
	p := &pyParser{s: strings.TrimSpace(s)}
	out := map[string]any{}
	if !p.eat('{') {
		return nil, fmt.Errorf("want a dict, got %.40q", p.s)
	}
	for {
		if p.eat('}') {
			break
		}
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		if !p.eat(':') {
			return nil, fmt.Errorf("want ':' after key %q", key)
		}
		v, err := p.value()
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
		out[key] = v
		if p.eat(',') {
			continue
		}
		if !p.eat('}') {
			return nil, fmt.Errorf("want ',' or '}' after key %q", key)
		}
		break
	}
	if strings.TrimSpace(p.s[p.i:]) != "" {
		return nil, fmt.Errorf("text after the dict: %.40q", p.s[p.i:])
	}
	return out, nil
}

type pyParser struct {
	s string
	i int
}

func (p *pyParser) skip() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\n' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *pyParser) eat(c byte) bool {
	p.skip()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *pyParser) str() (string, error) {
	p.skip()
	if p.i >= len(p.s) || (p.s[p.i] != '\'' && p.s[p.i] != '"') {
		return "", fmt.Errorf("want a quoted string at %.40q", p.s[p.i:])
	}
	q := p.s[p.i]
	end := strings.IndexByte(p.s[p.i+1:], q)
	if end < 0 {
		return "", fmt.Errorf("unterminated string")
	}
	v := p.s[p.i+1 : p.i+1+end]
	p.i += end + 2
	return v, nil
}

func (p *pyParser) value() (any, error) {
	p.skip()
	rest := p.s[p.i:]
	switch {
	case strings.HasPrefix(rest, "True"):
		p.i += 4
		return true, nil
	case strings.HasPrefix(rest, "False"):
		p.i += 5
		return false, nil
	case strings.HasPrefix(rest, "'") || strings.HasPrefix(rest, `"`):
		return p.str()
	case strings.HasPrefix(rest, "("):
		p.i++
		var dims []int
		for {
			if p.eat(')') {
				return dims, nil
			}
			p.skip()
			j := p.i
			for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
				j++
			}
			n, err := strconv.Atoi(p.s[p.i:j])
			if err != nil || n > math.MaxInt32 {
				return nil, fmt.Errorf("want a dimension at %.20q", p.s[p.i:])
			}
			p.i = j
			if p.i < len(p.s) && p.s[p.i] == 'L' { // Python 2 long literal
				p.i++
			}
			dims = append(dims, n)
			if p.eat(',') {
				continue
			}
			if p.eat(')') {
				return dims, nil
			}
			return nil, fmt.Errorf("want ',' or ')' in a shape tuple")
		}
	}
	return nil, fmt.Errorf("unsupported value %.20q", rest)
}

// floatsAt converts elements [lo, hi) of a float array's raw little-endian data to float32.
func floatsAt(dt loader.DType, data []byte, lo, hi int, dst []float32) []float32 {
	dst = dst[:0]
	switch dt {
	case loader.F32:
		for i := lo; i < hi; i++ {
			dst = append(dst, math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
		}
	case loader.BF16:
		for i := lo; i < hi; i++ {
			dst = append(dst, loader.BF16ToF32(binary.LittleEndian.Uint16(data[2*i:])))
		}
	case loader.F16:
		for i := lo; i < hi; i++ {
			dst = append(dst, loader.F16ToF32(binary.LittleEndian.Uint16(data[2*i:])))
		}
	case loader.F64:
		for i := lo; i < hi; i++ {
			dst = append(dst, float32(math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))))
		}
	}
	return dst
}

// intAt reads element i of an integer array's raw little-endian data.
func intAt(dt loader.DType, data []byte, i int) int64 {
	switch dt {
	case loader.I64:
		return int64(binary.LittleEndian.Uint64(data[8*i:]))
	case loader.I32:
		return int64(int32(binary.LittleEndian.Uint32(data[4*i:])))
	case loader.I16:
		return int64(int16(binary.LittleEndian.Uint16(data[2*i:])))
	case loader.I8:
		return int64(int8(data[i]))
	case loader.U8:
		return int64(data[i])
	}
	return 0
}
