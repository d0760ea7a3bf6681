// Package cublas binds the parts of cuBLAS and cuBLASLt that qvl uses,
// loaded at run time with purego like package cuda (no cgo, no headers).
//
// The main entry point is Handle.Linear, the PyTorch Linear product
//
//	Y[M,N] = X[M,K] · W[N,K]ᵀ (+ beta·Y)
//
// on row-major bf16 (or f16, or f32) X and W with f32 accumulation and Y in
// f32 or in the input type. cuBLAS is column-major, and a row-major matrix
// is the column-major view of its transpose, so Linear asks cuBLAS for
//
//	Yᵀ[N,M] = W · Xᵀ  =  op(A)·op(B) with A = W (column-major K×N, lda = K,
//	op = T), B = X (column-major K×M, ldb = K, op = N), C = D = Y
//	(column-major N×M, ldc = N)
//
// i.e. gemm(transa=T, transb=N, m=N, n=M, k=K) with no data movement: the
// "TN" layout, the one every cuBLAS tensor-core kernel supports. The cuBLASLt
// descriptors and the heuristic's algorithm for a shape are a plan, cached
// per (M, N, K, types, pointer alignments) in an LRU.
//
// Everything here, like package cuda's driver calls, must run on the device
// thread: inside (*cuda.Device).Do.
package cublas
