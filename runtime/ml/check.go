package ml

import "fmt"

// The Check functions validate the operands of an op; every backend calls them before it
// launches anything, so a bad call fails the same way everywhere.

func want(op, name string, t Tensor, dt DType, shape ...int) error {
	if t == nil {
		return fmt.Errorf("%s: %s is missing", op, name)
	}
	if t.DType() != dt {
		return fmt.Errorf("%s: %s is %s, want %s", op, name, t.DType(), dt)
	}
	got := t.Shape()
	ok := len(got) == len(shape)
	for i := 0; ok && i < len(shape); i++ {
		ok = shape[i] < 0 || got[i] == shape[i]
	}
	if !ok {
		return ShapeError(op, name, got, fmt.Sprint(shape))
	}
	return nil
}

func isFloat(t Tensor) bool { return t != nil && (t.DType() == F32 || t.DType() == BF16) }

func wantMatrix(op, name string, t Tensor, rows, cols int) error {
	if !isFloat(t) {
		return fmt.Errorf("%s: %s must be an f32 or bf16 tensor", op, name)
	}
	s := t.Shape()
	if len(s) != 2 || (rows >= 0 && s[0] != rows) || (cols >= 0 && s[1] != cols) {
		return ShapeError(op, name, s, fmt.Sprintf("[%d %d]", rows, cols))
	}
	return nil
}

func wantVector(op, name string, t Tensor, n int) error {
	if !isFloat(t) {
		return fmt.Errorf("%s: %s must be an f32 or bf16 tensor", op, name)
	}
	if s := t.Shape(); len(s) != 1 || s[0] != n {
		return ShapeError(op, name, s, fmt.Sprintf("[%d]", n))
	}
	return nil
}

// CheckMatMul validates out[N, M] = x[N, K] · w[M, K]ᵀ.
func CheckMatMul(out, x, w Tensor) error {
	if err := want("MatMul", "x", x, F32, -1, -1); err != nil {
		return err
	}
	n, k := x.Shape()[0], x.Shape()[1]
	if err := wantMatrix("MatMul", "w", w, -1, k); err != nil {
		return err
	}
	return want("MatMul", "out", out, F32, n, w.Shape()[0])
}

// CheckRMSNorm validates out = RMSNorm(x) with weight w.
func CheckRMSNorm(out, x, w Tensor) error {
	if err := want("RMSNorm", "x", x, F32, -1, -1); err != nil {
		return err
	}
	if err := wantVector("RMSNorm", "w", w, x.Shape()[1]); err != nil {
		return err
	}
	return want("RMSNorm", "out", out, F32, x.Shape()...)
}

// CheckAddRMSNorm validates x += delta; out = RMSNorm(x).
func CheckAddRMSNorm(out, x, delta, w Tensor) error {
	if err := CheckRMSNorm(out, x, w); err != nil {
		return err
	}
	return want("AddRMSNorm", "delta", delta, F32, x.Shape()...)
}

// CheckSwiGLU validates out[N, I] from gu[N, 2I].
func CheckSwiGLU(out, gu Tensor) error {
	if err := want("SwiGLU", "out", out, F32, -1, -1); err != nil {
		return err
	}
	return want("SwiGLU", "gu", gu, F32, out.Shape()[0], 2*out.Shape()[1])
}

// CheckScatterAdd validates x[idx[r]] += rows[r].
func CheckScatterAdd(x, rows, idx Tensor) error {
	if err := want("ScatterAdd", "x", x, F32, -1, -1); err != nil {
		return err
	}
	if err := want("ScatterAdd", "rows", rows, F32, -1, x.Shape()[1]); err != nil {
		return err
	}
	return want("ScatterAdd", "idx", idx, I32, rows.Shape()[0])
}

// CheckGather validates out[r] = x[idx[r]].
func CheckGather(out, x, idx Tensor) error {
	if err := want("Gather", "x", x, F32, -1, -1); err != nil {
		return err
	}
	if err := want("Gather", "idx", idx, I32, -1); err != nil {
		return err
	}
	return want("Gather", "out", out, F32, idx.Shape()[0], x.Shape()[1])
}

// CheckEmbed validates the fused embedding-projection op.
func CheckEmbed(out Tensor, a EmbedArgs) error {
	const op = "EmbedProject"
	if err := want(op, "tokens", a.Tokens, I32, -1); err != nil {
		return err
	}
	n := a.Tokens.Shape()[0]
	if err := wantMatrix(op, "table", a.Table, -1, -1); err != nil {
		return err
	}
	h := a.Table.Shape()[1]
	if err := want(op, "out", out, F32, n, h); err != nil {
		return err
	}
	if a.VisualIdx != nil {
		if err := want(op, "visual_idx", a.VisualIdx, I32, -1); err != nil {
			return err
		}
		if err := want(op, "visual", a.Visual, F32, a.VisualIdx.Shape()[0], h); err != nil {
			return err
		}
	}
	if a.CustomIdx != nil {
		p := a.Projector
		if p == nil {
			return fmt.Errorf("%s: custom embeddings given but no projector is loaded", op)
		}
		if p.H != h {
			return fmt.Errorf("%s: projector output size %d differs from hidden size %d", op, p.H, h)
		}
		if err := wantMatrix(op, "projector fc1", p.FC1, -1, -1); err != nil {
			return err
		}
		hid, d := p.FC1.Shape()[0], p.FC1.Shape()[1]
		if err := wantVector(op, "projector fc1 bias", p.B1, hid); err != nil {
			return err
		}
		if err := wantMatrix(op, "projector fc2", p.FC2, p.K*p.H, hid); err != nil {
			return err
		}
		if err := wantVector(op, "projector fc2 bias", p.B2, p.K*p.H); err != nil {
			return err
		}
		if err := want(op, "custom", a.Custom, F32, -1, d); err != nil {
			return err
		}
		if err := want(op, "custom_idx", a.CustomIdx, I32, -1); err != nil {
			return err
		}
		if err := want(op, "custom_src", a.CustomSrc, I32, a.CustomIdx.Shape()[0]); err != nil {
			return err
		}
	}
	return nil
}

// CheckQKV validates the QKV finishing op.
func CheckQKV(qkv Tensor, a QKVArgs) error {
	const op = "QKV"
	if a.HeadDim <= 0 || a.HeadDim%2 != 0 || a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 {
		return fmt.Errorf("%s: bad attention sizes heads=%d kv_heads=%d head_dim=%d", op, a.Heads, a.KVHeads, a.HeadDim)
	}
	if err := want(op, "qkv", qkv, F32, -1, (a.Heads+2*a.KVHeads)*a.HeadDim); err != nil {
		return err
	}
	n := qkv.Shape()[0]
	if err := want(op, "q", a.Q, F32, n, a.Heads*a.HeadDim); err != nil {
		return err
	}
	if err := wantVector(op, "q_norm", a.QNorm, a.HeadDim); err != nil {
		return err
	}
	if err := wantVector(op, "k_norm", a.KNorm, a.HeadDim); err != nil {
		return err
	}
	if err := want(op, "pos", a.Pos, I32, n, 3); err != nil {
		return err
	}
	if err := want(op, "slots", a.Slots, I32, n); err != nil {
		return err
	}
	return checkCache(op, a.K, a.V, a.Layout, a.KVHeads, a.HeadDim)
}

func checkCache(op string, k, v Tensor, l KVLayout, kvHeads, headDim int) error {
	if l.KVHeads != kvHeads || l.HeadDim != headDim || l.BlockSize <= 0 {
		return fmt.Errorf("%s: cache layout %+v does not fit kv_heads=%d head_dim=%d", op, l, kvHeads, headDim)
	}
	for _, c := range []struct {
		n string
		t Tensor
	}{{"k_cache", k}, {"v_cache", v}} {
		if c.t == nil {
			return fmt.Errorf("%s: %s is missing", op, c.n)
		}
		if !isFloat(c.t) {
			return fmt.Errorf("%s: %s must be f32 or bf16", op, c.n)
		}
		s := c.t.Shape()
		ls := l.Shape()
		if len(s) != 4 || s[0] != ls[0] || s[1] != ls[1] || s[2] != ls[2] || s[3] != ls[3] {
			return ShapeError(op, c.n, s, fmt.Sprint(ls))
		}
	}
	return nil
}

// CheckAttention validates paged attention.
func CheckAttention(out, q Tensor, a AttnArgs) error {
	const op = "Attention"
	if a.HeadDim <= 0 || a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 {
		return fmt.Errorf("%s: bad attention sizes heads=%d kv_heads=%d head_dim=%d", op, a.Heads, a.KVHeads, a.HeadDim)
	}
	if err := want(op, "q", q, F32, -1, a.Heads*a.HeadDim); err != nil {
		return err
	}
	if err := want(op, "out", out, F32, q.Shape()...); err != nil {
		return err
	}
	if err := want(op, "seq_start", a.SeqStart, I32, a.NumSeqs+1); err != nil {
		return err
	}
	if err := want(op, "ctx_len", a.CtxLen, I32, a.NumSeqs); err != nil {
		return err
	}
	if err := want(op, "block_tables", a.BlockTables, I32, a.NumSeqs, -1); err != nil {
		return err
	}
	return checkCache(op, a.K, a.V, a.Layout, a.KVHeads, a.HeadDim)
}

// CheckNormMatMul validates x += delta (delta optional); h = RMSNorm(x); y = h · wᵀ.
func CheckNormMatMul(y, h, x, delta, norm, w Tensor) error {
	if delta != nil {
		if err := CheckAddRMSNorm(h, x, delta, norm); err != nil {
			return err
		}
	} else if err := CheckRMSNorm(h, x, norm); err != nil {
		return err
	}
	return CheckMatMul(y, h, w)
}

// CheckMLP validates x += delta; h = RMSNorm(x); gu = h · wguᵀ; act = SwiGLU(gu);
// y = act · wdownᵀ.
func CheckMLP(y, act, gu, h, x, delta, norm, wgu, wdown Tensor) error {
	if err := CheckNormMatMul(gu, h, x, delta, norm, wgu); err != nil {
		return err
	}
	return CheckSwiGLUMatMul(y, act, gu, wdown)
}

// CheckSwiGLUMatMul validates act = SwiGLU(gu); y = act · wᵀ.
func CheckSwiGLUMatMul(y, act, gu, w Tensor) error {
	if err := CheckSwiGLU(act, gu); err != nil {
		return err
	}
	return CheckMatMul(y, act, w)
}
