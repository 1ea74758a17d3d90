"""Weight quantization for causal LMs: the math of each algorithm as plain functions on one weight matrix.

The step classes that wire these into recipes live in `compress.steps.quantize`; the checkpoint format in
`compress.models.compressed_tensors`.
"""
