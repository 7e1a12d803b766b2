"""Analysis of trained or untrained KAN models: Hessian spectra, memory / throughput, spline plots.

Submodules are imported on use (`kanvision.analysis.hessian`, ...) so the CLI stays light.
"""
