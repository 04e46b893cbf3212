"""The ``kube-proxy-py lab`` commands, one module each: up, down, status, kubectl,
shell, load-image."""
