"""Options of ``kube-proxy-py run``, read as upstream kube-proxy reads its own.

- parse.py: the argparse parser and ``parse_run_args`` (precedence of flags and file);
- flags.py, fields.py: the tables of upstream's flags and config fields (reasons.py: the
  notes they share);
- govalues.py: Go value syntax (durations, booleans, integers);
- commandline.py: the flags given → settings; configfile.py: the config file → settings;
- checks.py: checks shared by both (mode, NodePort addresses, bind addresses, periods);
- nodename.py: this node's name; envrefs.py: the kubelet's ``$(VAR)`` expansion;
- settings.py: the resolved settings, one frozen AgentOptions;
- docs.py: the reference tables of docs/deploy.md.
"""
