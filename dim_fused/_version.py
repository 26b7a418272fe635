"""The package version: the one place it is written (setup and pyproject read it from here)."""

__version__ = "0.1.0"
