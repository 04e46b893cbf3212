"""kube-proxy-py: a kube-proxy replacement written in Python."""

__version__ = "0.1.0"
