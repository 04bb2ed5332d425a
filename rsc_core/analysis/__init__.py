"""Stage 6, analysis: what finished runs say. Comparing runs against their clean baseline,
input sensitivity, first-layer weight maps and the study's linear-model theory.

Imports the kernel and stages 1-5.
"""
