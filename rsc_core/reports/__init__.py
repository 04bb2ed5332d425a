"""Stage 11, reports: the study's tables and figures from many runs.

Imports the kernel and every earlier stage.
"""
