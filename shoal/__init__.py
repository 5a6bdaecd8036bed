"""shoal: a sidecarless service mesh. This package is the shared core and the CLI."""

__version__ = "0.1.0"
