"""What the node agent's capture and the ztunnel agree on inside every enrolled pod.

The node agent redirects a pod's TCP (iptables or eBPF) to the ztunnel's
listeners in that pod's netns: outbound to `OUTBOUND_PORT`, inbound plaintext
to `INBOUND_PORT`, while HBONE on `HBONE_PORT` reaches the ztunnel as it is.
Every socket the ztunnel opens in a pod carries SO_MARK `MARK`, and the
capture lets marked sockets through, or the ztunnel would capture itself.
Both sides import these from here so that they cannot drift apart.
"""

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
HBONE_PORT = 15008
MARK = 0x539
