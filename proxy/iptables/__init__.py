"""iptables mode: :mod:`names` (fixed and per service port chains), :mod:`model` (chains
per table, built-in jumps, what a save shows), :mod:`save` (parsing ``iptables-save``),
:mod:`render` (plan → chains, pure), :mod:`restore` (full, partial and cleanup
``iptables-restore`` input), :mod:`kernel` (the writer) and :mod:`mode` (all of it behind
:class:`proxy.modes.Mode`)."""
