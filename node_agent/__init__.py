"""The node agent: enrolls this node's pods in the mesh and redirects their traffic to the ztunnel.

How it fits together (decide, then do):
- sources.py      pods of this node and namespaces, from the local store or Kubernetes
- reconcile.py    sans-IO: which pods belong in the mesh, and the plan to get there
- agent.py        the one state store and the driver: carries plans out, talks to the
                  ztunnel over the hand-off (shoal/handoff.py), serves metrics.py
- redirect.py     the one interface to redirection (install / remove / installed),
                  the ledger of what was installed, the choice of mode
- iptables.py     nat rules in the pod's netns, both families (backend.py: legacy or nft)
- ebpf.py         bpf/redirect.c, pinned and attached; libbpf.py for what bcc does not wrap;
                  ebpf_build.py compiles it with bcc in a short-lived child, so bcc never
                  loads in the agent
- probes.py       kubelet probes under STRICT mTLS: SNAT in the node's netns
- discover.py     a Kubernetes pod's netns and cgroup, from /proc
- hostmounts.py   the host's /sys when started through `ip netns exec`
"""
