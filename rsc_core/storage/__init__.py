"""Storage: files written whole or not at all (atomic), content digests, where rsc keeps
its data and runs (paths), and TOML text. Part of the kernel: every stage may use it; it
imports nothing of rsc but ``rsc_core.errors``.
"""
