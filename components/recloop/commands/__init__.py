"""The `recloop` command groups, one module each, mounted by `recloop.cli`."""
