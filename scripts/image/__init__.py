"""Building shoal's image without a registry: `make image` runs build.sh, which uses oci.py."""
