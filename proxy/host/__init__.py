"""The host layer: network namespaces, links, processes, and a topology built from them.

The bottom of the stack. The test harness (:mod:`proxy.harness`) and the lab
(:mod:`proxy.lab`) both stand on it; the agent uses only :func:`proxy.host.netns.run_in_netns`
(to open a netlink socket in another namespace). Nothing here imports any other part of
``proxy``.

- :mod:`~proxy.host.errors`: HostError, CommandError
- :mod:`~proxy.host.process`: running commands, children started and stopped by pid
- :mod:`~proxy.host.netns`: named namespaces (create, delete, enter, empty, sysctls)
- :mod:`~proxy.host.links`: ``ip -batch``, veth pairs and the LAN bridge
- :mod:`~proxy.host.sockets`: sockets and HTTP connections inside a namespace
- :mod:`~proxy.host.spec`: plain descriptions of nodes, pods and clients on a LAN
- :mod:`~proxy.host.network`: a :class:`~proxy.host.network.Network` of namespaces built
  from a spec, torn down by id
"""
