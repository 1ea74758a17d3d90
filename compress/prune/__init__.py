"""Pruning math: sparsity patterns, masks from scores, Wanda's and SparseGPT's criteria, measured sparsity.

Plain functions over one weight matrix (and its calibration statistics); the steps in `compress.steps.prune`
wire them into recipes.
"""
