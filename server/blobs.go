package server

import (
	"bytes"
	"strconv"
)

// Large base64 payloads (image_embeds and embedding "data") are lifted out of a request body
// before JSON decoding: encoding/json scans every byte of a document at each layer that decodes
// it (the request, the messages, each part, each image object), about 15 MB/s over all layers,
// which made an 11 MB Qwen3-VL-2B image cost 750 ms to parse. Each such string is replaced by a
// short placeholder string, and the image decoders take the bytes from the request's blob table.
// Replacing one string literal by another keeps the document's validity and structure, so every
// JSON error is still found, and reported the same, by the decoders.

// blobPrefix starts every placeholder; a NUL never appears in base64, so no real payload is
// mistaken for one (a client that writes one only names its own request's blobs).
const blobPrefix = "\x00qvl-blob:"

// minBlobBytes is the shortest string lifted out (a variable so that fuzzing can lower it).
var minBlobBytes = 1024

// extractBlobs returns body with the base64 values of "data" keys of at least minBlobBytes
// replaced by placeholders, and the lifted strings (aliasing body). It returns body itself when
// nothing is lifted, or when the text is not well-formed enough to lex (the decoders then report
// it as they would).
func extractBlobs(body []byte) ([]byte, [][]byte) {
	var out []byte
	var blobs [][]byte
	copied := 0 // body[:copied] is in out
	lastKey := []byte(nil)
	i := 0
	for {
		q := bytes.IndexByte(body[i:], '"')
		if q < 0 {
			break
		}
		start := i + q
		end, escaped := stringEnd(body, start+1)
		if end < 0 {
			return body, nil
		}
		// A key is followed by a colon.
		k := end + 1
		for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
			k++
		}
		isKey := k < len(body) && body[k] == ':'
		content := body[start+1 : end]
		switch {
		case isKey:
			lastKey = content
		case string(lastKey) == "data" && !escaped && len(content) >= minBlobBytes && isBase64(content):
			if out == nil {
				out = make([]byte, 0, 4096)
			}
			out = append(out, body[copied:start]...)
			out = append(out, `"\u0000qvl-blob:`...)
			out = strconv.AppendInt(out, int64(len(blobs)), 10)
			out = append(out, '"')
			blobs = append(blobs, content)
			copied = end + 1
			lastKey = nil
		default:
			lastKey = nil
		}
		i = end + 1
	}
	if blobs == nil {
		return body, nil
	}
	return append(out, body[copied:]...), blobs
}

// stringEnd finds the closing quote of a JSON string whose content starts at i, and whether the
// string has escapes; -1 when it is not closed.
func stringEnd(b []byte, i int) (int, bool) {
	escaped := false
	for {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return -1, escaped
		}
		j := i + q
		// The quote is escaped when an odd number of backslashes precede it.
		n := 0
		for k := j - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		if bytes.IndexByte(b[i:j], '\\') >= 0 {
			escaped = true
		}
		if n%2 == 0 {
			return j, escaped
		}
		i = j + 1
	}
}

// isBase64 reports whether s holds only characters of the standard base64 alphabet.
func isBase64(s []byte) bool {
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// blobRef returns the lifted string a placeholder names, if s is one.
func blobRef(s []byte, blobs [][]byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(s, []byte(blobPrefix))
	if !ok {
		return nil, false
	}
	n, err := strconv.Atoi(string(rest))
	if err != nil || n < 0 || n >= len(blobs) {
		return nil, false
	}
	return blobs[n], true
}
