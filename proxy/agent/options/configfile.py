"""The config file: a ``kubeproxy.config.k8s.io/v1alpha1`` ``KubeProxyConfiguration``
(YAML or JSON) → AgentOptions.

As upstream: one document; apiVersion and kind required; a zero value or null means the
default, for Go pointer fields only null does; unknown fields are accepted with a warning
(upstream falls back to lenient decoding and logs it), and so are duplicate keys; the
active mode's section (``iptables.`` or ``nftables.``) gives the masquerade settings and
sync periods.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml

from proxy import apivalidation as av
from proxy import documents
from proxy.agent.options.checks import (
    check_masquerade_bit,
    check_periods,
    host_port,
    ip_or_none,
    nodeport_addresses,
    proxy_mode,
)
from proxy.agent.options.fields import (
    FIELDS,
    IGNORED_FIELDS,
    MODE_SECTION_FIELDS,
    OBJECTS,
    TYPE_META,
    ConfigField,
)
from proxy.agent.options.govalues import Kind, parse_go_duration, parse_text
from proxy.agent.options.settings import (
    DEFAULT_CONFIG_SYNC_PERIOD,
    DEFAULT_MASQUERADE_BIT,
    DEFAULT_MIN_SYNC_PERIOD,
    DEFAULT_SYNC_PERIOD,
    HEALTHZ_PORT,
    METRICS_PORT,
    AgentOptions,
)
from proxy.config import ConfigError, ProxyMode, parse_cidrs

CONFIG_API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
CONFIG_KIND = "KubeProxyConfiguration"
MAX_CONFIG_BYTES = 16 * 1024 * 1024


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys (upstream's strict decoding flags them)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            if key in seen:
                loader.duplicates.append(f"line {key_node.start_mark.line + 1}: field {key!r}")
            seen.add(key)
        except TypeError:
            pass  # an unhashable key: construct_mapping below reports it
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_config_text(path: str) -> str:
    try:
        text = documents.read_file(path, MAX_CONFIG_BYTES, f"--config: {path}")
        documents.check_yaml(text, f"--config: {path}")
        return text
    except documents.DocumentError as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError:
        raise ConfigError(f"--config: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(
            f"--config: {path} is a directory; give the config.conf file in it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--config: {path}: {exc.strerror}") from None


def _load_document(path: str, warnings: list[str]) -> dict[Any, Any]:
    loader = _Loader(_read_config_text(path))
    try:
        docs = _all_documents(loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML or JSON: {exc}") from None
    except Exception as exc:  # PyYAML's constructors raise anything on a bad tagged value
        raise ConfigError(f"--config: {path}: {documents.value_problem(exc)}") from None
    finally:
        loader.dispose()
    if not docs:
        raise ConfigError(f"--config: {path} is empty; it must hold a {CONFIG_KIND}")
    if len(docs) != 1:
        raise ConfigError(
            f"--config: {path} holds {len(docs)} YAML documents; give exactly one {CONFIG_KIND}"
        )
    doc = docs[0]
    if not isinstance(doc, dict):
        raise ConfigError(
            f"--config: {path} must hold a {CONFIG_KIND} mapping, not {_type_name(doc)}"
        )
    warnings.extend(
        f"{path}: {where} appears twice; the last value is used" for where in loader.duplicates
    )
    return doc


def _all_documents(loader: _Loader) -> list[Any]:
    docs: list[Any] = []
    while loader.check_node():
        docs.append(loader.get_data())
    return [d for d in docs if d is not None]


def _check_type_meta(doc: Mapping[Any, Any], path: str) -> None:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind == "ConfigMap":
        raise ConfigError(
            f"--config: {path} is a ConfigMap; give the file its data['config.conf'] holds "
            "(the DaemonSet mounts the ConfigMap as a directory of such files)"
        )
    if api_version is None or kind is None:
        raise ConfigError(
            f"--config: {path}: apiVersion and kind are required; start the file with "
            f"apiVersion: {CONFIG_API_VERSION} and kind: {CONFIG_KIND}"
        )
    if api_version != CONFIG_API_VERSION:
        raise ConfigError(
            f"--config: {path}: apiVersion {api_version!r} is not supported; kube-proxy v1.37 "
            f"and kube-proxy-py read {CONFIG_API_VERSION}"
        )
    if kind != CONFIG_KIND:
        raise ConfigError(f"--config: {path}: kind {kind!r} is not {CONFIG_KIND}")


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _flatten(doc: Mapping[Any, Any], label: str, warnings: list[str]) -> dict[str, Any]:
    """Known fields as {dotted path: raw value}; a warning for every unknown field."""
    out: dict[str, Any] = {}
    _walk(doc, "", label, out, warnings)
    return out


def _walk(
    obj: Mapping[Any, Any], prefix: str, label: str, out: dict[str, Any], warnings: list[str]
) -> None:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if path in FIELDS:
            out[path] = value
        elif path in OBJECTS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{label}: {path}: expected a mapping of fields, got {_type_name(value)}"
                )
            _walk(value, f"{path}.", label, out, warnings)
        elif path not in TYPE_META:
            warnings.append(_unknown_field(label, prefix, str(key)))


def _unknown_field(label: str, prefix: str, key: str) -> str:
    siblings = {p[len(prefix) :].split(".")[0] for p in (*FIELDS, *OBJECTS) if p.startswith(prefix)}
    if not prefix:
        siblings |= TYPE_META
    close = difflib.get_close_matches(key, sorted(siblings), n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"{label}: unknown field {prefix}{key} is ignored{hint}"


def _typed_field(spec: ConfigField, raw: object, label: str) -> object:
    """A field's YAML value checked against its kind; durations become seconds."""
    if raw is None:
        return None
    what = f"{label}: {spec.path}"
    if spec.kind in (Kind.DURATION, Kind.FLUSH):
        return _typed_duration(spec.kind, raw, what)
    if not _kind_accepts(spec.kind, raw):
        raise ConfigError(f"{what}: expected {spec.kind.value}, got {_type_name(raw)} {raw!r}")
    if spec.kind is Kind.QUANTITY:
        return str(raw)
    return raw


def _typed_duration(kind: Kind, raw: object, what: str) -> float:
    if isinstance(raw, str):
        return parse_go_duration(raw, what)
    if kind is Kind.FLUSH and isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= 1 << 63:
            raise ConfigError(f"{what}: {av.show(raw)} nanoseconds is out of range")
        return raw / 1e9
    raise ConfigError(f'{what}: expected a quoted Go duration such as "30s", got {av.show(raw)}')


def _kind_accepts(kind: Kind, raw: object) -> bool:
    if kind is Kind.BOOL:
        return isinstance(raw, bool)
    if isinstance(raw, bool):
        return False
    checks: dict[Kind, bool] = {
        Kind.STRING: isinstance(raw, str),
        Kind.INT: isinstance(raw, int),
        Kind.NUMBER: isinstance(raw, int | float),
        Kind.QUANTITY: isinstance(raw, str | int | float),
        Kind.LIST: isinstance(raw, list),
        Kind.STRING_LIST: isinstance(raw, list) and all(isinstance(i, str) for i in raw),
        Kind.BOOL_MAP: isinstance(raw, dict)
        and all(isinstance(k, str) and isinstance(v, bool) for k, v in raw.items()),
    }
    return checks[kind]


def _is_default(spec: ConfigField, value: object) -> bool:
    if value is None:
        return True
    if not spec.pointer and value in ("", 0, [], {}):
        return True
    return any(value == parse_text(spec.kind, d, spec.path) for d in spec.defaults)


class _FileValues:
    """Typed access to the fields a config file sets (absent and null read as None)."""

    def __init__(self, raw: Mapping[str, object], label: str) -> None:
        self.raw = raw
        self.values = {p: _typed_field(FIELDS[p], v, label) for p, v in raw.items()}
        self.label = label

    def what(self, path: str) -> str:
        return f"{self.label}: {path}"

    def text(self, path: str) -> str:
        value = self.values.get(path)
        return value if isinstance(value, str) else ""

    def flag(self, path: str, default: bool) -> bool:
        value = self.values.get(path)
        return value if isinstance(value, bool) else default

    def integer(self, path: str, default: int) -> int:
        value = self.values.get(path)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def period(self, path: str, default: float) -> float:
        """A duration where 0 (or unset) means the default, as upstream's defaulting does."""
        value = self.values.get(path)
        return value if isinstance(value, float) and value != 0 else default

    def strings(self, path: str) -> list[str]:
        value = self.values.get(path)
        return [str(v) for v in value] if isinstance(value, list) else []


def read_config_file(path: str, warnings: list[str]) -> AgentOptions:
    """The configuration from the file; ``node_name`` is its hostnameOverride ("" for none),
    resolved by parse.py against --hostname-override and the environment."""
    doc = _load_document(path, warnings)
    _check_type_meta(doc, path)
    raw = _flatten(doc, path, warnings)
    values = _FileValues(raw, path)
    _warn_ignored_fields(values, warnings)
    mode = proxy_mode(values.text("mode"), values.what("mode"))
    _warn_other_mode_section(values, mode, warnings)
    section = "nftables" if mode is ProxyMode.NFTABLES else "iptables"
    sync = values.period(f"{section}.syncPeriod", DEFAULT_SYNC_PERIOD)
    min_sync = values.period(f"{section}.minSyncPeriod", DEFAULT_MIN_SYNC_PERIOD)
    config_sync = values.period("configSyncPeriod", DEFAULT_CONFIG_SYNC_PERIOD)
    names = (
        values.what(f"{section}.syncPeriod"),
        values.what(f"{section}.minSyncPeriod"),
        values.what("configSyncPeriod"),
    )
    check_periods(sync, min_sync, config_sync, names)
    healthz, metrics = _file_servers(values)
    return AgentOptions(
        node_name=values.text("hostnameOverride"),
        mode=mode,
        kubeconfig=values.text("clientConnection.kubeconfig") or None,
        master=None,
        cluster_cidrs=parse_cidrs(values.text("clusterCIDR"), values.what("clusterCIDR")),
        nodeport_addresses=nodeport_addresses(
            values.strings("nodePortAddresses"), values.what("nodePortAddresses")
        ),
        masquerade_all=values.flag(f"{section}.masqueradeAll", False),
        masquerade_bit=check_masquerade_bit(
            values.integer(f"{section}.masqueradeBit", DEFAULT_MASQUERADE_BIT),
            values.what(f"{section}.masqueradeBit"),
        ),
        localhost_nodeports=values.flag("iptables.localhostNodePorts", True),
        sync_period=sync,
        min_sync_period=min_sync,
        config_sync_period=config_sync,
        healthz_bind_address=healthz,
        metrics_bind_address=metrics,
        cleanup=False,
        verbosity=_file_verbosity(values),
        config_file=path,
        warnings=(),
    )


def _file_servers(values: _FileValues) -> tuple[str, str]:
    """healthzBindAddress and metricsBindAddress, defaulted by bindAddress's family."""
    bind = values.text("bindAddress") or "0.0.0.0"
    bind_ip = ip_or_none(bind)
    if bind_ip is None:
        raise ConfigError(f"{values.what('bindAddress')}: {bind!r} is not an IP address")
    healthz_host, metrics_host = (
        ("0.0.0.0", "127.0.0.1") if bind_ip.version == 4 else ("[::]", "[::1]")
    )
    healthz = values.text("healthzBindAddress") or f"{healthz_host}:{HEALTHZ_PORT}"
    metrics = values.text("metricsBindAddress") or f"{metrics_host}:{METRICS_PORT}"
    return (
        host_port(healthz, HEALTHZ_PORT, values.what("healthzBindAddress")),
        host_port(metrics, METRICS_PORT, values.what("metricsBindAddress")),
    )


def _file_verbosity(values: _FileValues) -> int:
    level = values.integer("logging.verbosity", 0)
    if level < 0:
        raise ConfigError(f"{values.what('logging.verbosity')}: {level} must be 0 or more")
    return level


def _warn_ignored_fields(values: _FileValues, warnings: list[str]) -> None:
    for spec in IGNORED_FIELDS:
        if spec.path not in values.values or _is_default(spec, values.values[spec.path]):
            continue
        warnings.append(
            f"{values.what(spec.path)}: {values.raw[spec.path]!r} is not supported by "
            f"kube-proxy-py and is ignored ({spec.note})"
        )


def _warn_other_mode_section(values: _FileValues, mode: ProxyMode, warnings: list[str]) -> None:
    """Fields of the inactive mode's section have no effect (upstream ignores them too)."""
    other = "iptables" if mode is ProxyMode.NFTABLES else "nftables"
    names = [*MODE_SECTION_FIELDS, *(("localhostNodePorts",) if other == "iptables" else ())]
    for name in names:
        path = f"{other}.{name}"
        if path in values.values and not _is_default(FIELDS[path], values.values[path]):
            active = f"{mode.value}.{name}" if name != "localhostNodePorts" else "nothing"
            warnings.append(
                f"{values.what(path)} has no effect in {mode.value} mode (as upstream); "
                f"{active} applies"
            )
