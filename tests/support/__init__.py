"""What tests share, written once. Tests import it by bare name (`from support.polling import eventually`):
pyproject's pytest `pythonpath` lists `tests`.

- `cli`: the `shoal` command, as a test runs it from a shell.
- `cluster`: a `shoal local` cluster driven through that command, and `running_cluster` for fixtures.
- `polling`: `eventually`, the one way to wait for a condition, in a plain and an async flavour.
- `ca`: a throwaway mesh CA.
- `metrics`: fetch and read Prometheus text exposition (`/metrics`), in a network namespace or not.
- `kube_api`: a Kubernetes API double that the real kubernetes client talks to.
- `root`: the mark for tests that need root.
"""
