"""The control plane: CA, config translation and sources, and the config server (gRPC on 15012)."""
