"""What tests share, written once. Tests import it by bare name (`from support.polling import eventually`):
pyproject's pytest `pythonpath` lists `tests`.

- `cli`: the `shoal` command (`shoal(...)`, `SHOAL` for Popen), as a test runs it from a shell.
- `cluster`: a `shoal local` cluster driven through that command (`LocalCluster`), and `running_cluster`
  for fixtures, which downs it whatever happens.
- `polling`: `eventually`, the one way to wait for a condition, and `eventually_async` inside a loop.
- `ca`: a throwaway mesh CA (`TestCA`) that signs CSRs and makes credentials.
- `metrics`: read Prometheus text exposition (`parse`, `value` by name and labels) and `scrape` it,
  in a network namespace or not.
- `net`: `free_port`, and `http_get` that may run in a network namespace.
- `capture`: tcpdump on a wire while a test's body runs.
- `plane`: the real control plane in-process on loopback (`start_plane`, `running_plane`, `running`).
- `kube_api`: the Kubernetes API double (`KubeApiServer`) that the real kubernetes client talks to, over HTTP
  (its parts: `kube_resources`, `kube_store`, `kube_http`); how to use it is at the top of kube_api.py.
- `root`: `needs_root(why)` for tests that build namespaces, rules or eBPF programs.
"""
