"""nftables mode: :mod:`names` (table, chains, sets), :mod:`model` (the table as objects,
incremental transactions), :mod:`render` (plan → table, pure), :mod:`endpointmaps`
(shared endpoint maps), :mod:`diff` (full sync, incremental and cleanup scripts),
:mod:`wire` (transactions as netlink messages, pure), :mod:`kernel` (the writer) and
:mod:`mode` (all of it behind :class:`proxy.modes.Mode`)."""
