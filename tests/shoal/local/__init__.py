"""A package (not a plain folder) so that the package-scoped `cluster` fixture is downed when this folder is done."""
