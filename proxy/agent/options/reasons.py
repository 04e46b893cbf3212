"""Why kube-proxy-py ignores an upstream flag or config field: the notes both tables share."""

IPVS = "IPVS mode is not implemented; use nftables"
CONNTRACK = "kube-proxy-py never changes conntrack sysctls"
LOGS = "kube-proxy-py logs in its own format; only the verbosity is read"
CLIENT = "the Python Kubernetes client's defaults apply"
LOCAL = "only ClusterCIDR local-traffic detection is implemented"
WINDOWS = "Windows only"
OOM = "kube-proxy-py leaves its OOM score to the kubelet (-997 for system-node-critical pods)"
