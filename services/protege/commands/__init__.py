"""Subcommands of the `protege` CLI, one module each."""
