package server

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
)

// Image part types (the "type" of a content part).
const (
	partImageEmbeds = "image_embeds"
	partImageRef    = "image_ref"
	partEmbedding   = "embedding"
)

// Wire dtypes of base64 image data.
const (
	dtypeFloat32  = "float32"
	dtypeBFloat16 = "bfloat16"
)

// imageLimits are what a request's images are checked against before any data is decoded.
type imageLimits struct {
	spec model.Spec
	// maxTokens is the most image tokens one prompt may hold (the context length - 1).
	maxTokens int
	// blobs are the base64 strings extractBlobs lifted out of the request body.
	blobs [][]byte
}

// imagePart is one image of a request, parsed but not yet resolved against the store or the
// projector.
type imagePart struct {
	// param names the part ("messages[1].content[0]").
	param string
	kind  string
	// img is a ready image (image_embeds).
	img *engine.Image
	// custom is an inline embedding to project.
	custom []float32
	// refID is the store id of an image_ref part.
	refID string
}

// imageEmbedsWire is the object of an image_embeds part.
type imageEmbedsWire struct {
	Data         json.RawMessage `json:"data"`
	DType        *string         `json:"dtype"`
	Shape        []int64         `json:"shape"`
	ImageGridTHW []int64         `json:"image_grid_thw"`
}

// embeddingWire is the object of an embedding part.
type embeddingWire struct {
	Data   json.RawMessage `json:"data"`
	Values []float64       `json:"values"`
	DType  *string         `json:"dtype"`
}

// imageRefWire is the object of an image_ref part.
type imageRefWire struct {
	ID *string `json:"id"`
}

// decodeStrict decodes a part's object, refusing unknown keys.
func decodeStrict(raw json.RawMessage, v any, param string) *APIError {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '{' {
		return badRequest(param, "%s must be an object", param)
	}
	dec := json.NewDecoder(bytes.NewReader(t))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		ae := jsonError(err)
		if ae.Param != "" {
			ae.Param = param + "." + ae.Param
			ae.Message = param + "." + ae.Message
		} else {
			ae.Param = param
			ae.Message = param + ": " + ae.Message
		}
		return ae
	}
	return nil
}

// parseImageParts finds the image parts of msgs, in the order the chat template renders their
// image pads, and checks each one's fields, shapes and values against the model.
func parseImageParts(msgs []chat.Message, lim imageLimits) ([]imagePart, *APIError) {
	var out []imagePart
	total := 0
	for mi, m := range msgs {
		if m.ContentString != nil {
			continue
		}
		for pj, p := range m.Content {
			if p.Type != chat.PartImage {
				continue
			}
			param := fmt.Sprintf("messages[%d].content[%d]", mi, pj)
			ip, err := parseImagePart(p.Kind, p.Data, param, lim)
			if err != nil {
				return nil, err
			}
			if ip.img != nil {
				total += len(ip.img.Embeds) / lim.spec.HiddenSize
			} else {
				total += lim.spec.ProjectorTokens
			}
			if total > lim.maxTokens {
				return nil, badRequest(param, "the images up to %s need %d tokens; this model's context is %d tokens", param, total, lim.maxTokens+1).withCode("context_length_exceeded")
			}
			out = append(out, ip)
		}
	}
	return out, nil
}

// withCode sets the error's code.
func (e *APIError) withCode(code string) *APIError {
	e.Code = code
	return e
}

// parseImagePart checks one image part of the given kind whose object is data.
func parseImagePart(kind string, data json.RawMessage, param string, lim imageLimits) (imagePart, *APIError) {
	ip := imagePart{param: param, kind: kind}
	p := param + "." + kind
	if !notNull(data) {
		return ip, badRequest(p, "a %q part needs its %q object", kind, kind)
	}
	switch kind {
	case partImageEmbeds:
		img, err := parseImageEmbeds(data, p, lim)
		if err != nil {
			return ip, err
		}
		ip.img = img
	case partEmbedding:
		v, err := parseEmbedding(data, p, lim)
		if err != nil {
			return ip, err
		}
		ip.custom = v
	case partImageRef:
		var w imageRefWire
		if err := decodeStrict(data, &w, p); err != nil {
			return ip, err
		}
		if w.ID == nil || *w.ID == "" {
			return ip, badRequest(p+".id", "%s.id must be a non-empty string", p)
		}
		if len(*w.ID) > 1024 {
			return ip, badRequest(p+".id", "%s.id is %d bytes, more than 1024", p, len(*w.ID))
		}
		ip.refID = *w.ID
	default:
		return ip, badRequest(param+".type", "%s: image part type %q is not served: images arrive as precomputed embeddings, as %q, %q or %q parts (see docs/api.md)",
			param, kind, partImageEmbeds, partImageRef, partEmbedding)
	}
	return ip, nil
}

// dtypeSize checks a wire dtype and returns its element size.
func dtypeSize(dt *string, param string) (int, *APIError) {
	if dt == nil {
		return 0, badRequest(param, "%s is required: %q or %q", param, dtypeFloat32, dtypeBFloat16)
	}
	switch *dt {
	case dtypeFloat32:
		return 4, nil
	case dtypeBFloat16:
		return 2, nil
	}
	return 0, badRequest(param, "%s %q is not supported: want %q or %q", param, *dt, dtypeFloat32, dtypeBFloat16)
}

// jsonString returns the text of a JSON string literal without copying it when it holds no
// escapes (base64 never needs any), and decodes it otherwise.
// A placeholder of a lifted string (see extractBlobs) gives the string itself.
func jsonString(raw json.RawMessage, param string, blobs [][]byte) ([]byte, *APIError) {
	t := bytes.TrimSpace(raw)
	if len(t) >= 2 && t[0] == '"' && t[len(t)-1] == '"' && bytes.IndexByte(t[1:len(t)-1], '\\') < 0 {
		return t[1 : len(t)-1], nil
	}
	var s string
	if err := json.Unmarshal(t, &s); err != nil {
		return nil, badRequest(param, "%s must be a string of base64", param)
	}
	if b, ok := blobRef([]byte(s), blobs); ok {
		return b, nil
	}
	return []byte(s), nil
}

// decodeBase64 checks that the JSON string raw is the base64 of exactly n bytes (padded or not)
// before decoding it.
func decodeBase64(raw json.RawMessage, blobs [][]byte, n int, param, shapeDesc string) ([]byte, *APIError) {
	s, aerr := jsonString(raw, param, blobs)
	if aerr != nil {
		return nil, aerr
	}
	enc := base64.StdEncoding
	if len(s) == base64.RawStdEncoding.EncodedLen(n) && len(s) != enc.EncodedLen(n) {
		enc = base64.RawStdEncoding
	}
	if len(s) != enc.EncodedLen(n) {
		return nil, badRequest(param, "%s has %d base64 characters; %s needs %d bytes, which are %d base64 characters",
			param, len(s), shapeDesc, n, base64.StdEncoding.EncodedLen(n))
	}
	b := make([]byte, n)
	if _, err := enc.Decode(b, s); err != nil {
		return nil, badRequest(param, "%s is not valid base64: %v", param, err)
	}
	return b, nil
}

// floatAt reads element i of little-endian data of element size 4 (float32) or 2 (bfloat16).
func floatAt(b []byte, size, i int) float32 {
	if size == 4 {
		return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return loader.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
}

// parseImageEmbeds checks and decodes an image_embeds object: vLLM's layout [tokens,
// H·(1+levels)] (or [tokens, H] without DeepStack features) with its pre-merge image_grid_thw.
func parseImageEmbeds(data json.RawMessage, p string, lim imageLimits) (*engine.Image, *APIError) {
	var w imageEmbedsWire
	if err := decodeStrict(data, &w, p); err != nil {
		return nil, err
	}
	size, err := dtypeSize(w.DType, p+".dtype")
	if err != nil {
		return nil, err
	}
	if len(w.ImageGridTHW) != 3 {
		return nil, badRequest(p+".image_grid_thw", "%s.image_grid_thw must be [t, h, w], got %d numbers", p, len(w.ImageGridTHW))
	}
	var grid [3]int
	for i, g := range w.ImageGridTHW {
		if g <= 0 || g > 1<<20 {
			return nil, badRequest(p+".image_grid_thw", "%s.image_grid_thw %v: entries must be in [1, 2^20]", p, w.ImageGridTHW)
		}
		grid[i] = int(g)
	}
	merge := lim.spec.SpatialMergeSize
	mg, merr := model.MergedGrid(grid, merge)
	if merr != nil {
		return nil, badRequest(p+".image_grid_thw", "%s.%v", p, merr)
	}
	tokens := int64(mg[0]) * int64(mg[1]) * int64(mg[2])
	if len(w.Shape) != 2 {
		return nil, badRequest(p+".shape", "%s.shape must be [tokens, columns], got %d numbers", p, len(w.Shape))
	}
	if w.Shape[0] != tokens {
		return nil, badRequest(p+".shape", "%s.shape %v has %d rows; image_grid_thw %v makes t·h·w/%d = %d tokens", p, w.Shape, w.Shape[0], grid, merge*merge, tokens)
	}
	if tokens > int64(lim.maxTokens) {
		return nil, badRequest(p+".shape", "%s has %d tokens; this model's context is %d tokens", p, tokens, lim.maxTokens+1).withCode("context_length_exceeded")
	}
	h, levels := lim.spec.HiddenSize, lim.spec.DeepStackLevels
	cols := w.Shape[1]
	withDS := cols == int64(h*(1+levels))
	if !withDS && cols != int64(h) {
		return nil, unprocessable(p+".shape", "%s.shape %v: rows must have hidden size × (1 + DeepStack levels) = %d × %d = %d values (or %d without DeepStack features) for this model",
			p, w.Shape, h, 1+levels, h*(1+levels), h)
	}
	if !notNull(w.Data) {
		return nil, badRequest(p+".data", "%s.data is required: base64 of little-endian %s values", p, *w.DType)
	}
	n := int(tokens) * int(cols)
	raw, err := decodeBase64(w.Data, lim.blobs, n*size, p+".data", fmt.Sprintf("shape %v of %s", w.Shape, *w.DType))
	if err != nil {
		return nil, err
	}
	img := &engine.Image{GridTHW: grid, Embeds: make([]float32, int(tokens)*h)}
	planes := 1
	if withDS && levels > 0 {
		planes = 1 + levels
		img.DeepStack = make([][]float32, levels)
		for l := range img.DeepStack {
			img.DeepStack[l] = make([]float32, int(tokens)*h)
		}
	}
	c := int(cols)
	for r := 0; r < int(tokens); r++ {
		for pl := 0; pl < planes; pl++ {
			dst := img.Embeds
			if pl > 0 {
				dst = img.DeepStack[pl-1]
			}
			for j := 0; j < h; j++ {
				v := floatAt(raw, size, r*c+pl*h+j)
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return nil, unprocessable(p+".data", "%s.data: value [%d, %d] is %v; embeddings must be finite", p, r, pl*h+j, v)
				}
				dst[r*h+j] = v
			}
		}
	}
	return img, nil
}

// parseEmbedding checks and decodes an embedding object: base64 data with a dtype, or values.
func parseEmbedding(data json.RawMessage, p string, lim imageLimits) ([]float32, *APIError) {
	spec := lim.spec
	var w embeddingWire
	if err := decodeStrict(data, &w, p); err != nil {
		return nil, err
	}
	d := spec.ProjectorInputDim
	if spec.ProjectorTokens == 0 {
		return nil, unprocessable(p, "%s: embedding parts need a projector, and this server has none loaded", p)
	}
	switch {
	case notNull(w.Data) && w.Values != nil:
		return nil, badRequest(p, "%s: give either data (base64) or values, not both", p)
	case w.Values != nil:
		if w.DType != nil && *w.DType != dtypeFloat32 {
			return nil, badRequest(p+".dtype", "%s.dtype applies to base64 data; values are numbers", p)
		}
		if len(w.Values) != d {
			return nil, unprocessable(p+".values", "%s.values has %d numbers; the projector takes embeddings of %d", p, len(w.Values), d)
		}
		out := make([]float32, d)
		for i, v := range w.Values {
			f := float32(v)
			if math.IsInf(float64(f), 0) || math.IsNaN(float64(f)) {
				return nil, unprocessable(p+".values", "%s.values[%d] = %g is not a finite float32", p, i, v)
			}
			out[i] = f
		}
		return out, nil
	case notNull(w.Data):
		size, err := dtypeSize(w.DType, p+".dtype")
		if err != nil {
			return nil, err
		}
		raw, err := decodeBase64(w.Data, lim.blobs, d*size, p+".data", fmt.Sprintf("an embedding of %d %s values", d, *w.DType))
		if err != nil {
			return nil, err
		}
		out := make([]float32, d)
		for i := range out {
			v := floatAt(raw, size, i)
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, unprocessable(p+".data", "%s.data: value %d is %v; embeddings must be finite", p, i, v)
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, badRequest(p, "%s needs data (base64 with a dtype) or values (an array of %d numbers)", p, d)
}
