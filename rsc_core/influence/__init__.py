"""Stage 4, influence: the inverse-Hessian machinery that removal methods and auditors share.
Hessian-vector products (the generic one and the MLP fast path), conjugate gradients, LiSSA
and EK-FAC.

Imports the kernel, ``data``, ``training`` and ``evaluation``.
"""
