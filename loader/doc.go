// Package loader reads what qvl needs from a Hugging Face Qwen3-VL checkpoint
// directory: safetensors files (memory-mapped, single or sharded through
// model.safetensors.index.json), config.json in its hub and transformers-v5
// forms, generation_config.json, the custom-embedding projector and the
// goldens reference directories used by the tests.
//
// The package holds no model math. Tensors are returned as views on the
// read-only mapping of their file; every "model.visual." tensor of a
// checkpoint is skipped when indexing so that its pages are never touched.
//
// All errors are values that name the file, and where it applies the tensor
// or field, and what was expected.
package loader
