"""`shoal local`: a whole multi-node mesh on one Linux machine, in network namespaces."""
