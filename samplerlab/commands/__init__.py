"""Subcommands of the ``samplerlab`` CLI (see :mod:`samplerlab.cli`)."""
