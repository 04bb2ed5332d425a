"""rsc's built-in plugins (installed as the ``rsc_plugins`` package). Each module is registered
through an ``rsc`` entry point in pyproject.toml, exactly as a third-party plugin would be."""
