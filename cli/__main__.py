"""``python -m rsc_cli`` runs the ``rsc`` command."""
from .main import main

main()
