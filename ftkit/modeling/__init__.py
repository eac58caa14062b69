"""Models below the run: loading weights and tokenizers, quantization, the memory estimate, pruning and ONNX."""
