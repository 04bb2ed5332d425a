"""rsc's command-line interface (installed as the ``rsc_cli`` package)."""
