"""The test CA lives in support.ca; this name stays until the tests that import it from here move."""

from support.ca import TestCA  # noqa: F401
