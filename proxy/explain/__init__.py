"""``explain``: what a node's rules do with one packet, and why; checked against the
kernel on request (:mod:`proxy.explain.kernelcheck`)."""
