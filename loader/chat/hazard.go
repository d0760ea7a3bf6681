package chat

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// This file finds the places where github.com/ardanlabs/jinja v1.8.0 is known to render a template
// differently from Jinja2 (the engine Hugging Face transformers uses), so that Parse can refuse such a
// template with an error that names the place instead of rendering a subtly wrong prompt.
//
// 1. Whitespace control across an adjacent tag. The engine applies a tag's trim ("{%-", "-%}",
//    "{{-", "-}}") and the trim_blocks / lstrip_blocks defaults of apply_chat_template to the nearest
//    text segment, even when another tag sits between. Jinja2 only touches the text directly next to
//    the tag. Example: in `{%- if x -%}A: {{ v }}{%- endif %}` the engine renders "A:v", Jinja2
//    "A: v". hazards simulates both rules on the template's segments and reports the first text whose
//    result differs.
// 2. `tojson(indent=...)`: the engine falls back to encoding/json there (keys sorted, <, >, &
//    escaped), unlike Python's json.dumps.
// 3. The "+" whitespace modifiers ("{%+", "+%}"), which the engine does not implement.
//
// Known differences it cannot see statically are listed in docs/decisions/chat-template.md.

type segKind int

const (
	segText segKind = iota
	segComment
	segExpr
	segStmt
)

type segment struct {
	kind      segKind
	text      string
	trimLeft  bool // "{%-", "{{-", "{#-"
	trimRight bool // "-%}", "-}}", "-#}"
	line, col int
}

// scanSegments splits a template into text and tag segments the way the engine's scanner does:
// a tag runs from its opener to the first matching closer outside quotes (comments ignore quotes).
func scanSegments(src string) ([]segment, error) {
	var segs []segment
	line, col := 1, 1
	advance := func(c byte) {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	i, textStart, textLine, textCol := 0, 0, 1, 1
	for i < len(src) {
		if src[i] != '{' || i+1 >= len(src) || (src[i+1] != '{' && src[i+1] != '%' && src[i+1] != '#') {
			advance(src[i])
			i++
			continue
		}
		kind, closer := segExpr, "}}"
		switch src[i+1] {
		case '%':
			kind, closer = segStmt, "%}"
		case '#':
			kind, closer = segComment, "#}"
		}
		if i > textStart {
			segs = append(segs, segment{kind: segText, text: src[textStart:i], line: textLine, col: textCol})
		}
		tagLine, tagCol := line, col
		i += 2
		col += 2
		seg := segment{kind: kind, line: tagLine, col: tagCol}
		if i < len(src) && src[i] == '-' {
			seg.trimLeft = true
			i++
			col++
		}
		start, found := i, false
		for i < len(src) {
			c := src[i]
			if kind != segComment && (c == '\'' || c == '"') {
				advance(c)
				i++
				for i < len(src) && src[i] != c {
					if src[i] == '\\' && i+1 < len(src) {
						advance(src[i])
						i++
					}
					advance(src[i])
					i++
				}
				if i < len(src) {
					advance(src[i])
					i++
				}
				continue
			}
			if c == '-' && i+2 < len(src) && src[i+1] == closer[0] && src[i+2] == closer[1] {
				seg.text, seg.trimRight, found = src[start:i], true, true
				i += 3
				col += 3
				break
			}
			if c == closer[0] && i+1 < len(src) && src[i+1] == closer[1] {
				seg.text, found = src[start:i], true
				i += 2
				col += 2
				break
			}
			advance(c)
			i++
		}
		if !found {
			return nil, fmt.Errorf("line %d col %d: tag is not closed", tagLine, tagCol)
		}
		segs = append(segs, seg)
		textStart, textLine, textCol = i, line, col
	}
	if textStart < len(src) {
		segs = append(segs, segment{kind: segText, text: src[textStart:], line: textLine, col: textCol})
	}
	return segs, nil
}

var tojsonIndent = regexp.MustCompile(`tojson\s*\([^)]*\bindent\s*=`)

// hazards returns an error describing the first construct of src that the engine renders
// differently from Jinja2, or nil.
func hazards(src string) error {
	segs, err := scanSegments(src)
	if err != nil {
		return err
	}
	for _, s := range segs {
		if s.kind == segText || s.kind == segComment {
			continue
		}
		if strings.HasPrefix(s.text, "+") || strings.HasSuffix(s.text, "+") {
			return fmt.Errorf("line %d col %d: the \"+\" whitespace modifier is not supported by the Go Jinja engine", s.line, s.col)
		}
		if tojsonIndent.MatchString(s.text) {
			return fmt.Errorf("line %d col %d: tojson with indent= is rendered by the Go Jinja engine with sorted keys and escaped <>&, unlike Python's json.dumps", s.line, s.col)
		}
	}
	engine := trimTexts(segs, false)
	jinja2 := trimTexts(segs, true)
	for i, s := range segs {
		if s.kind == segText && engine[i] != jinja2[i] {
			return fmt.Errorf("line %d col %d: whitespace control of a neighbouring tag reaches across another tag here; the Go Jinja engine would render %q where Jinja2 renders %q (rewrite the template so that whitespace control only touches text right next to its tag)",
				s.line, s.col, clip(engine[i]), clip(jinja2[i]))
		}
	}
	return nil
}

// trimTexts applies whitespace control to the text segments: explicit trim markers strip all
// whitespace on their side, and block and comment tags without a marker get lstrip_blocks (the
// indentation before a tag that starts its line) and trim_blocks (one newline after the tag).
// With adjacentOnly, a tag only affects the segment right next to it (Jinja2); without, the nearest
// text segment in that direction (the engine). Jinja2's markers strip any Unicode whitespace (its
// \s), the engine's only space, tab, CR and LF. Left sides are all applied before right sides, as
// the engine does; on adjacent segments the order does not change the result.
func trimTexts(segs []segment, adjacentOnly bool) []string {
	texts := make([]string, len(segs))
	for i, s := range segs {
		texts[i] = s.text
	}
	find := func(i, step int) int {
		for j := i + step; j >= 0 && j < len(segs); j += step {
			if segs[j].kind == segText {
				return j
			}
			if adjacentOnly {
				return -1
			}
		}
		return -1
	}
	firstText := -1
	for i, s := range segs {
		if s.kind == segText {
			firstText = i
			break
		}
	}
	for i, s := range segs {
		if s.kind == segText {
			continue
		}
		j := find(i, -1)
		if j < 0 {
			continue
		}
		switch {
		case s.trimLeft && adjacentOnly:
			texts[j] = strings.TrimRightFunc(texts[j], unicode.IsSpace)
		case s.trimLeft:
			texts[j] = strings.TrimRight(texts[j], " \t\n\r")
		case s.kind == segStmt || s.kind == segComment:
			// The engine treats its first text segment as the start of the template even when a
			// tag precedes it; Jinja2 only the text that really opens the template.
			texts[j] = lstripBlock(texts[j], (adjacentOnly && j == 0) || (!adjacentOnly && j == firstText))
		}
	}
	for i, s := range segs {
		if s.kind == segText {
			continue
		}
		j := find(i, +1)
		if j < 0 {
			continue
		}
		switch {
		case s.trimRight && adjacentOnly:
			texts[j] = strings.TrimLeftFunc(texts[j], unicode.IsSpace)
		case s.trimRight:
			texts[j] = strings.TrimLeft(texts[j], " \t\n\r")
		case s.kind == segStmt || s.kind == segComment:
			if strings.HasPrefix(texts[j], "\r\n") {
				texts[j] = texts[j][2:]
			} else if strings.HasPrefix(texts[j], "\n") {
				texts[j] = texts[j][1:]
			}
		}
	}
	return texts
}

// lstripBlock removes the spaces and tabs that end s when they follow a newline (or start the
// template): the indentation of a block tag that is first on its line.
func lstripBlock(s string, atStart bool) string {
	end := len(s)
	for end > 0 && (s[end-1] == ' ' || s[end-1] == '\t') {
		end--
	}
	switch {
	case end == len(s):
		return s
	case end == 0 && atStart:
		return ""
	case end > 0 && s[end-1] == '\n':
		return s[:end]
	}
	return s
}

func clip(s string) string {
	const n = 40
	if len(s) <= 2*n {
		return s
	}
	return s[:n] + "…" + s[len(s)-n:]
}
