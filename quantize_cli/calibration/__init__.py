"""Importance matrices and calibration-aware quantization.

collect         activation statistics of a model on a text, as llama-imatrix collects them (+ H = X^T X)
imatrix_writer  llama.cpp's imatrix files (GGUF and legacy .dat), written and merged byte for byte
blocks          quantized blocks taken apart into levels and fields and packed back, bit-exact
refine          importance-weighted search for the block fields (diag(H) only)
optimize        GPTQ inside ggml's block grids; `optimize_plan` puts either optimizer into a plan
blas            numpy's BLAS on one thread while the optimizer runs (speed, reproducible bytes)
"""
