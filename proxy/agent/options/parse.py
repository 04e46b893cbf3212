"""``kube-proxy-py run``'s command line (argparse) + config file → one frozen AgentOptions.

``parse_run_args(argv, env)`` reads the node agent's command line the way upstream
kube-proxy v1.37 reads its own: the same flag names, defaults and config file
(``kubeproxy.config.k8s.io/v1alpha1`` ``KubeProxyConfiguration``), so an upstream
DaemonSet's arguments and its ConfigMap's ``config.conf`` work unchanged.

Precedence, as upstream v1.37.2 does it (``cmd/kube-proxy/app/options.go``,
``Options.Complete``; confirmed by running the v1.37.2 binary with ``--write-config-to``):

* without ``--config``, each flag given overrides its upstream default;
* with ``--config FILE``, the file replaces *every* configuration flag. Only these
  still apply: ``--hostname-override`` (wins over the file's ``hostnameOverride``),
  ``--master``, ``--cleanup`` and ``-v`` (wins over ``logging.verbosity``). Upstream
  drops every other flag silently; kube-proxy-py drops it too, with a warning naming
  the flag and the config field to set instead.

Other upstream facts carried over:

* in the file, a zero value or null means "the default" (``syncPeriod: 0s`` is 30s);
  for Go pointer fields (``masqueradeBit``, ``localhostNodePorts``, ``oomScoreAdj``,
  ``conntrack.*``) only null does. Unknown fields are accepted with a warning (upstream
  falls back to lenient decoding and logs it). Durations are Go strings ("30s").
* Masquerade settings and sync periods come from the active mode's section
  (``iptables.*`` or ``nftables.*``). On the command line ``--iptables-sync-period`` and
  ``--iptables-min-sync-period`` set the periods in nftables mode too (upstream has no
  ``--nftables-*`` flags), but ``--iptables-masquerade-bit`` does not: nftables mode
  reads ``nftables.masqueradeBit`` (default 14), which only the file can set.
* The node name is trimmed and lower-cased.
* No kubeconfig and no master: in-cluster config. kube-proxy never reads
  ``$KUBECONFIG`` and neither does kube-proxy-py; ``--master`` alone means that URL
  without credentials.
* Health and metrics addresses are ``IP`` or ``IP:port`` (a bare IP gets the default
  port; ``--healthz-port``/``--metrics-port``, deprecated, give that port when no
  ``--config`` is used, and ``--healthz-port=0`` turns the health server off). v1.37
  accepts no CIDR form.

kube-proxy-py's own choices: the node name falls back to ``$NODE_NAME`` before the host
name; upstream flags and fields that kube-proxy-py does not implement are accepted and
named in ``AgentOptions.warnings`` (unless set to upstream's default);
``--init-only`` and ``--write-config-to`` are errors, because ignoring them would run
the agent where the caller expects a quick exit; ``mode: ipvs`` is an error.

The flag and field tables (flags.py, fields.py) are the single source of the parser and
of the reference tables in docs/deploy.md (``python -m proxy.agent.options.docs`` prints
them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from proxy import __version__
from proxy.agent.options.commandline import (
    IGNORED_DEST,
    flag_bool,
    flag_text,
    read_flags,
    warn_flags_beside_config,
    warn_ignored_flags,
)
from proxy.agent.options.configfile import read_config_file
from proxy.agent.options.flags import (
    FLAGS,
    IGNORED_FLAGS,
    REJECTED_FLAGS,
    SUPPORTED_FLAGS,
    FlagSpec,
)
from proxy.agent.options.govalues import Kind
from proxy.agent.options.nodename import node_name
from proxy.agent.options.settings import AgentOptions
from proxy.config import ConfigError


class _IgnoredFlag(argparse.Action):
    """Accepts an upstream flag kube-proxy-py does not implement; remembers it for a warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        seen = list(getattr(namespace, IGNORED_DEST, []))
        value = values if isinstance(values, str) else "true"
        seen.append((self.option_strings[-1], value))
        setattr(namespace, IGNORED_DEST, seen)


class _RejectedFlag(argparse.Action):
    """An upstream flag that would change what the process does: refuse it, saying why."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        spec = FLAGS[self.option_strings[-1]]
        raise argparse.ArgumentError(self, f"not supported by kube-proxy-py: {spec.note}")


class _RunParser(argparse.ArgumentParser):
    """Raises ConfigError instead of exiting (--help and --version still exit)."""

    def error(self, message: str) -> Any:
        raise ConfigError(f"kube-proxy-py run: {message}; see kube-proxy-py run --help")


def _metavar(spec: FlagSpec) -> str:
    names = {Kind.DURATION: "DURATION", Kind.INT: "INT", Kind.NUMBER: "NUMBER", Kind.BOOL: "BOOL"}
    return spec.metavar or names.get(spec.kind, "VALUE")


def _add_flag(parser: argparse._ActionsContainer, spec: FlagSpec, **kwargs: Any) -> None:
    if spec.kind is Kind.BOOL:
        kwargs.update(nargs="?", const="true")
    parser.add_argument(
        *spec.option_strings,
        default=argparse.SUPPRESS,
        metavar=_metavar(spec),
        help=spec.note,
        **kwargs,
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every flag of ``kube-proxy-py run`` (upstream's names) on parser.

    Values stay strings and only given flags are set (default SUPPRESS); parse_run_args
    turns them into AgentOptions.
    """
    for spec in SUPPORTED_FLAGS:
        action = "append" if spec.kind is Kind.STRING_LIST else "store"
        _add_flag(parser, spec, dest=spec.dest, action=action)
    parser.add_argument("--version", action="version", version=f"kube-proxy-py {__version__}")
    ignored = parser.add_argument_group(
        "upstream kube-proxy flags accepted for compatibility and ignored with a warning"
    )
    for spec in IGNORED_FLAGS:
        _add_flag(ignored, spec, dest=IGNORED_DEST, action=_IgnoredFlag)
    rejected = parser.add_argument_group("upstream kube-proxy flags refused")
    for spec in REJECTED_FLAGS:
        _add_flag(rejected, spec, dest=IGNORED_DEST, action=_RejectedFlag)


def _build_parser() -> _RunParser:
    parser = _RunParser(
        prog="kube-proxy-py run",
        usage="%(prog)s [flags]",
        description="Run the node agent: watch Services, EndpointSlices and this Node; "
        "program iptables or nftables. Flags and config file as upstream kube-proxy.",
        allow_abbrev=False,
    )
    add_run_arguments(parser)
    return parser


def _no_value(value: object, append: bool) -> bool:
    if append and isinstance(value, list):
        return any(isinstance(v, list) for v in value)
    return isinstance(value, list)


def option_without_value(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The option, among those of the chosen (sub)commands, that takes one value but got
    none: argparse reads ``--opt=--`` as an empty list instead of refusing it (pflag takes
    ``--`` as the value)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None and (found := option_without_value(chosen, args)):
                return found
        elif (
            isinstance(action, argparse._StoreAction | argparse._AppendAction)
            and action.nargs is None
            and _no_value(
                getattr(args, action.dest, None), isinstance(action, argparse._AppendAction)
            )
        ):
            return max(action.option_strings, key=len)
    return None


def _verbosity(flag: str | None, from_file: int) -> int:
    if flag is None:
        return from_file
    text = flag.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise ConfigError(f"-v: {flag!r} is not a verbosity level; use 0 or a positive integer")
    return int(text)


def parse_run_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentOptions:
    """``kube-proxy-py run`` arguments (after ``run``) → AgentOptions; ConfigError if bad.

    env defaults to os.environ (only ``NODE_NAME`` is read).
    """
    parser = _build_parser()
    parsed = parser.parse_args(list(argv))
    if (option := option_without_value(parser, parsed)) is not None:
        raise ConfigError(f"kube-proxy-py run: {option}: no value given ('--' is not one)")
    given = vars(parsed)
    environ: Mapping[str, str] = os.environ if env is None else env
    warnings: list[str] = []
    warn_ignored_flags(given, warnings)
    config_file = flag_text(given, "--config") or None
    if config_file is not None:
        warn_flags_beside_config(given, warnings)
        configured = read_config_file(config_file, warnings)
    else:
        configured = read_flags(given, warnings)
    return replace(
        configured,
        node_name=node_name(flag_text(given, "--hostname-override"), configured.node_name, environ),
        master=(flag_text(given, "--master") or "").strip() or None,
        cleanup=flag_bool(given, "--cleanup", False),
        service_counters=flag_bool(given, "--metrics-service-counters", False),
        verbosity=_verbosity(flag_text(given, "--v"), configured.verbosity),
        warnings=tuple(dict.fromkeys(warnings)),
    )
