"""One client for everything that talks to a Kubernetes API server.

- :mod:`~proxy.apiclient.config`: kubeconfig, in-cluster config, credentials (token,
  token file, client certificate, exec plugin);
- :mod:`~proxy.apiclient.transport`: connections, TLS, timeouts, and where sockets are
  made (this network namespace or another one);
- :mod:`~proxy.apiclient.client`: get/list/watch/create/patch/delete, :class:`ApiError`,
  :class:`Backoff`;
- :mod:`~proxy.apiclient.watch`: the watch stream decoder.
"""
