"""Stage 1, data: what a model is trained and tested on. Spurious specs (``mnistv8-3-0-0``),
the pattern and dataset interfaces, the decoded-tensor cache, planting a pattern into the
selected images, training subsets, membership splits and pattern files.

Imports only the kernel (``rsc_core.errors``, ``registry``, ``named_options``, ``storage``...).
"""
