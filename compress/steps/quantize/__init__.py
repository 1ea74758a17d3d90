"""LLM weight quantization steps: `rtn`, `gptq`, `awq` (math in `compress.quantize`)."""
