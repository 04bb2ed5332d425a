"""Stage 8, privacy: membership inference. The attack interface that attack plugins
implement, the queries and metrics, the experiment (target and shadow models), its summary
and ROC figure.

Imports the kernel and stages 1-5.
"""
