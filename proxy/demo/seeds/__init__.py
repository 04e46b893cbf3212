"""``kube-proxy-py lab seeds``: the learners' notes in ``seeds/``, replayed on the lab.

Each of the five notes becomes a walkthrough: every command is printed as the note types
it and run for real against the lab (``kubectl`` is the lab's, through
``kube-proxy-py lab kubectl``), its output shown and the note's claim checked. Where a
note is wrong or out of date, the walkthrough runs what the note has, shows what really
happens and says why, then runs the corrected command; every such difference is listed
again in the summary. Commands the notes do not type (waiting for a rollout, a request
from the outside client ...) are marked ``# not in the note``.

Every walkthrough works in a namespace of its own (``seed-000`` ..., and the note's
``lab06`` for seed 004): its kubectl uses a kubeconfig whose context names that
namespace, so the notes' commands run exactly as typed. Each recreates its namespace
first and deletes it last. The manifests are :mod:`proxy.demo.seedmanifests`, written
into a scratch directory under the names the notes use.
"""
