"""Kubeconfig / in-cluster parsing of proxy.apiclient (no network, no root)."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.apiclient.client import USER_AGENT, ApiClient, ApiError, Backoff
from proxy.apiclient.config import (
    ClientConfig,
    CredentialError,
    ExecCredentialSource,
    ExecPlugin,
    TokenSource,
    load_config,
)
from proxy.apiclient.transport import HTTPSConnection, build_ssl_context
from proxy.config import ConfigError
from proxy.lab.pki import CertificateAuthority, CertKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("kpp-unit-ca")


@pytest.fixture(scope="module")
def client_pair(ca: CertificateAuthority) -> CertKey:
    return ca.issue("kube-proxy-py", organizations=["system:node-proxier"], client=True)


def kubeconfig(
    cluster: dict[str, Any],
    user: dict[str, Any] | None = None,
    *,
    current: str = "ctx",
    extra_contexts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://wrong.example:1"}},
            {"name": "lab", "cluster": cluster},
        ],
        "users": [{"name": "me", "user": user or {}}],
        "contexts": [
            {"name": "unused", "context": {"cluster": "other", "user": "me"}},
            {"name": "ctx", "context": {"cluster": "lab", "user": "me"}},
            *(extra_contexts or []),
        ],
        "current-context": current,
    }


def write(path: Path, doc: dict[str, Any], as_json: bool = False) -> str:
    path.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc))
    return str(path)


# --------------------------------------------------------------------------- kubeconfig


def test_current_context_with_embedded_ca_and_client_cert(
    tmp_path: Path, ca: CertificateAuthority, client_pair: CertKey
) -> None:
    doc = kubeconfig(
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64(ca.cert_pem)},
        {
            "client-certificate-data": b64(client_pair.cert_pem),
            "client-key-data": b64(client_pair.key_pem),
        },
    )
    path = write(tmp_path / "kc", doc, as_json=True)
    cfg = load_config(path)
    assert cfg.server == "https://127.0.0.1:6443"  # from "ctx", not the first cluster
    assert cfg.ca_pem == ca.cert_pem
    assert cfg.client_cert_pem == client_pair.cert_pem
    assert cfg.client_key_pem == client_pair.key_pem
    assert cfg.token is None and cfg.token_file is None
    assert path in cfg.source and "ctx" in cfg.source
    # Secrets stay out of repr (logs).
    assert b64(client_pair.key_pem)[:20] not in repr(cfg)

    client = ApiClient.from_config(path)
    assert client.server == "https://127.0.0.1:6443"
    ctx = build_ssl_context(cfg)
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # only our CA, not the system store
    client.close()


def test_files_relative_to_the_kubeconfig_and_token_file_wins(
    tmp_path: Path, ca: CertificateAuthority, client_pair: CertKey
) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(ca.cert_pem)
    cert, key = client_pair.write(tmp_path / "pki", "client")
    (tmp_path / "token").write_text("from-file\n")
    doc = kubeconfig(
        {"server": "https://10.0.0.1:443", "certificate-authority": "pki/ca.crt"},
        {
            "client-certificate": str(cert),  # absolute
            "client-key": "pki/client.key",  # relative to the kubeconfig's directory
            "token": "inline",
            "tokenFile": "token",
        },
    )
    cfg = load_config(write(tmp_path / "kc.yaml", doc))
    assert cfg.ca_pem == ca.cert_pem
    assert cfg.client_cert_pem == cert.read_bytes()
    assert cfg.client_key_pem == key.read_bytes()
    assert cfg.token_file == str(tmp_path / "token")
    client = ApiClient(cfg)
    # client-go: the token file's content takes precedence over the inline token.
    headers = client._headers()
    assert headers["Authorization"] == "Bearer from-file"
    assert headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("kube-proxy-py/")
    assert headers["Accept"] == "application/json"


def test_inline_token_and_insecure(tmp_path: Path) -> None:
    doc = kubeconfig(
        {"server": "https://api.example:8443", "insecure-skip-tls-verify": True},
        {"token": "abc"},
    )
    cfg = load_config(write(tmp_path / "kc", doc))
    assert cfg.token == "abc" and cfg.insecure_skip_tls_verify
    assert ApiClient(cfg)._headers()["Authorization"] == "Bearer abc"
    ctx = build_ssl_context(cfg)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_tls_server_name_and_path_prefix(tmp_path: Path, ca: CertificateAuthority) -> None:
    doc = kubeconfig(
        {
            "server": "https://10.1.2.3:443/k8s/clusters/c-1",
            "certificate-authority-data": b64(ca.cert_pem),
            "tls-server-name": "kubernetes.default.svc",
        }
    )
    cfg = load_config(write(tmp_path / "kc", doc))
    client = ApiClient(cfg)
    assert cfg.tls_server_name == "kubernetes.default.svc"
    conn = client._new_connection()
    assert isinstance(conn, HTTPSConnection)
    assert conn.server_hostname == "kubernetes.default.svc"
    assert client._url("/api/v1/nodes", {"fieldSelector": "metadata.name=a b"}) == (
        "/k8s/clusters/c-1/api/v1/nodes?fieldSelector=metadata.name%3Da+b"
    )
    assert "Authorization" not in client._headers()


def test_master_overrides_the_server(tmp_path: Path, ca: CertificateAuthority) -> None:
    doc = kubeconfig(
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(ca.cert_pem)},
        {"token": "t"},
    )
    path = write(tmp_path / "kc", doc)
    cfg = load_config(path, "https://127.0.0.1:7443")
    assert cfg.server == "https://127.0.0.1:7443"
    assert cfg.token == "t" and cfg.ca_pem == ca.cert_pem  # credentials kept
    # Without a scheme: https when TLS is configured (client-go's DefaultServerURL).
    assert load_config(path, "127.0.0.1:7443").server == "https://127.0.0.1:7443"


def test_master_alone_has_no_credentials_and_skips_in_cluster(tmp_path: Path) -> None:
    cfg = load_config(None, "http://127.0.0.1:8080", env={}, serviceaccount_dir=tmp_path)
    assert cfg == ClientConfig(server="http://127.0.0.1:8080", source="--master")
    assert build_ssl_context(cfg) is None


# --------------------------------------------------------------------------- in-cluster


def sa_dir(tmp_path: Path, ca: CertificateAuthority, token: str = "tok-1") -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(token)
    (d / "ca.crt").write_bytes(ca.cert_pem)
    return d


def test_in_cluster(tmp_path: Path, ca: CertificateAuthority) -> None:
    d = sa_dir(tmp_path, ca)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    client = ApiClient.from_config(env=env, serviceaccount_dir=d)
    assert client.server == "https://10.96.0.1:443"
    assert client.config.ca_pem == ca.cert_pem
    assert client.config.token_file == str(d / "token")
    assert client._headers()["Authorization"] == "Bearer tok-1"
    v6 = load_config(env={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
                     serviceaccount_dir=d)  # fmt: skip
    assert v6.server == "https://[fd00::1]:443"


def test_in_cluster_errors_name_what_is_missing(tmp_path: Path, ca: CertificateAuthority) -> None:
    d = sa_dir(tmp_path, ca)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_PORT not set"):
        load_config(env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, serviceaccount_dir=d)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"):
        load_config(env={}, serviceaccount_dir=d)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    (d / "token").write_bytes(b"tok\xff")  # not UTF-8: named, not a UnicodeDecodeError
    with pytest.raises(ConfigError, match=r"service account token .*character 4 is U\+FFFD"):
        load_config(env=env, serviceaccount_dir=d)
    (d / "token").write_text("tok-1")
    (d / "ca.crt").unlink()
    with pytest.raises(ConfigError, match=rf"cannot read {d / 'ca.crt'}"):
        load_config(env=env, serviceaccount_dir=d)
    (d / "token").unlink()
    with pytest.raises(ConfigError, match=rf"token: cannot read {d / 'token'}"):
        load_config(env=env, serviceaccount_dir=d)


# --------------------------------------------------------------------------- token refresh


def test_token_file_is_reread_periodically_and_after_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    now = [1000.0]
    source = TokenSource(token_file=str(token_file), refresh_seconds=60, clock=lambda: now[0])
    assert source.get() == "first"
    token_file.write_text("second")
    now[0] += 59
    assert source.get() == "first"  # cached within the refresh period
    now[0] += 2
    assert source.get() == "second"
    token_file.write_text("third")
    source.invalidate()  # what a 401 does
    assert source.get() == "third"
    token_file.unlink()  # a failed re-read keeps the last good token
    now[0] += 120
    assert source.get() == "third"
    assert TokenSource(token="fixed").get() == "fixed"


def test_a_token_file_that_cannot_make_a_header_is_refused_or_skipped(tmp_path: Path) -> None:
    """A token is printable ASCII: one that is not is refused at load, and a later
    re-read that is not keeps the last good token (never a header http.client refuses)."""
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xef\xbb\xbfsecret\n")  # saved with a BOM
    doc = kubeconfig({"server": "https://127.0.0.1:6443"}, {"tokenFile": str(token_file)})
    with pytest.raises(ConfigError, match=r"tokenFile .*character 1 is a byte order mark"):
        load_config(write(tmp_path / "kc", doc))
    token_file.write_bytes(b"good\n")
    assert load_config(write(tmp_path / "kc", doc)).token_file == str(token_file)
    now = [0.0]
    source = TokenSource(token_file=str(token_file), refresh_seconds=60, clock=lambda: now[0])
    assert source.get() == "good"
    for bad in (b"\xff\xfe", b"two words", b"caf\xc3\xa9"):
        token_file.write_bytes(bad)
        now[0] += 61
        assert source.get() == "good", bad
    token_file.write_bytes(b"  rotated \n")
    now[0] += 61
    assert source.get() == "rotated"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: d.update({"current-context": ""}), "current-context", "not set"),
        (lambda d: d.update({"current-context": "nope"}), "contexts", "no context named 'nope'"),
        (lambda d: d["clusters"].pop(), "clusters", "no cluster named 'lab'"),
        (lambda d: d["users"].clear(), "users", "no user named 'me'"),
        (lambda d: d["clusters"][1]["cluster"].pop("server"), "clusters[lab].cluster.server",
         "missing"),
        (lambda d: d["clusters"][1]["cluster"].update(server="ftp://x"),
         "clusters[lab].cluster.server", "not an http"),
        (lambda d: d["clusters"][1]["cluster"].update({"certificate-authority-data": "@@"}),
         "clusters[lab].cluster.certificate-authority-data", "not valid base64"),
        (lambda d: d["clusters"][1]["cluster"].update({"certificate-authority": "/no/ca.crt"}),
         "clusters[lab].cluster.certificate-authority", "cannot read /no/ca.crt"),
        (lambda d: d["clusters"][1]["cluster"].update({"certificate-authority-data": b64(b"x"),
                                                       "insecure-skip-tls-verify": True}),
         "clusters[lab].cluster", "both set"),
        (lambda d: d["users"][0]["user"].update({"client-certificate-data": b64(b"x")}),
         "users[me].user", "client-certificate given without client-key"),
        (lambda d: d["users"][0]["user"].update({"client-key": "missing.key"}),
         "users[me].user.client-key", "cannot read"),
        (lambda d: d["users"][0]["user"].update({"tokenFile": "/no/token"}),
         "users[me].user.tokenFile", "cannot read /no/token"),
        (lambda d: d["users"][0]["user"].update({"auth-provider": {"name": "gcp"}}),
         "users[me].user.auth-provider", "not supported"),
        (lambda d: d["users"][0]["user"].update({"exec": {"command": "aws"}}),
         "users[me].user.exec.apiVersion", "is not one of client.authentication.k8s.io/v1"),
        (lambda d: d["users"][0]["user"].update(
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}),
         "users[me].user.exec.command", "missing"),
        (lambda d: d["users"][0]["user"].update(
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x",
                      "env": [{"name": "A"}]}}),
         "users[me].user.exec.env[0].value", "expected a string"),
        (lambda d: d["users"][0]["user"].update({"token": 5}), "users[me].user.token",
         "expected a string"),
        (lambda d: d["users"][0]["user"].update({"token": "Bearer \ufeffabc"}),
         "users[me].user.token", "character 7 is U+0020"),
        (lambda d: d["users"][0]["user"].update({"token": "\ufeffabc"}),
         "users[me].user.token", "character 1 is a byte order mark"),
        (lambda d: d["users"][0]["user"].update({"token": "ab\r\nX-Evil: 1"}),
         "users[me].user.token", "character 3 is U+000D"),
    ],
)  # fmt: skip
def test_kubeconfig_errors_name_the_file_and_field(
    tmp_path: Path, mutate: Any, field: str, message: str
) -> None:
    doc = kubeconfig({"server": "https://127.0.0.1:6443"}, {"token": "t"})
    load_config(write(tmp_path / "ok", doc))  # the unmutated document is fine
    mutate(doc)
    path = write(tmp_path / "kubeconfig", doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: {field}"), text
    assert message in text, text


def test_unreadable_or_malformed_kubeconfig(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError, match=rf"{missing}: kubeconfig: cannot read"):
        load_config(str(missing))
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n")
    with pytest.raises(ConfigError, match=rf"{bad}:2:1: not valid YAML"):
        load_config(str(bad))
    scalar = tmp_path / "scalar"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match=rf"{scalar}: expected a kubeconfig"):
        load_config(str(scalar))


def test_bad_pem_is_a_config_error(tmp_path: Path, ca: CertificateAuthority) -> None:
    doc = kubeconfig(
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(b"not pem")}
    )
    with pytest.raises(ConfigError, match="certificate authority: not a PEM"):
        ApiClient.from_config(write(tmp_path / "kc", doc))
    doc = kubeconfig(
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(ca.cert_pem)},
        {"client-certificate-data": b64(ca.cert_pem), "client-key-data": b64(b"garbage")},
    )
    with pytest.raises(ConfigError, match="client certificate/key do not load"):
        ApiClient.from_config(write(tmp_path / "kc2", doc))


def test_api_error_from_status() -> None:
    gone = ApiError.from_status(
        {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"},
        path="/api/v1/services",
    )
    assert gone.status == 410 and gone.expired
    assert str(gone) == "GET /api/v1/services: HTTP 410 Expired: too old resource version"
    denied = ApiError.from_status({"code": 403, "reason": "Forbidden", "message": "no RBAC"})
    assert not denied.expired and denied.status == 403
    down = ApiError(None, "ConnectionError", "refused")
    assert down.status is None and not down.expired
    too_large = ApiError(504, "Timeout", "Too large resource version: 9, current: 5")
    assert too_large.resource_version_too_large


# --------------------------------------------------------------------------- exec plugins

V1 = "client.authentication.k8s.io/v1"


def exec_plugin(tmp_path: Path, script: str, **extra: Any) -> ExecPlugin:
    """A kubeconfig whose user runs ``./plugin`` (a shell script), loaded."""
    plugin = tmp_path / "plugin"
    plugin.write_text(f"#!/bin/sh\n{script}\n")
    plugin.chmod(0o755)
    user = {"exec": {"apiVersion": V1, "command": "./plugin", **extra}}
    cfg = load_config(write(tmp_path / "kc", kubeconfig({"server": "https://10.0.0.1"}, user)))
    assert cfg.exec_plugin is not None
    return cfg.exec_plugin


def credential_json(status: dict[str, Any], api_version: str = V1) -> str:
    doc = {"apiVersion": api_version, "kind": "ExecCredential", "status": status}
    return f"cat <<'EOF'\n{json.dumps(doc)}\nEOF"


def test_exec_plugin_is_resolved_next_to_the_kubeconfig_and_gets_its_env(tmp_path: Path) -> None:
    plugin = exec_plugin(
        tmp_path,
        'printf \'{"apiVersion": "%s", "kind": "ExecCredential", "status": {"token": "%s-%s"}}\' '
        '"$(echo "$KUBERNETES_EXEC_INFO" | sed \'s/.*"apiVersion": "\\([^"]*\\)".*/\\1/\')" '
        '"$GREETING" "$1"',
        args=["arg1"],
        env=[{"name": "GREETING", "value": "hello"}],
    )
    assert plugin.command == str(tmp_path / "plugin")
    source = ExecCredentialSource(plugin)
    assert source.get() == "hello-arg1"
    assert source.generation == 1


def test_exec_credential_is_cached_until_it_expires_or_a_401(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    status = {"token": "t", "expirationTimestamp": "2030-01-01T00:00:00Z"}
    plugin = exec_plugin(tmp_path, f"echo run >> {runs}\n{credential_json(status)}")
    now = [datetime.datetime(2029, 12, 31, 23, 59, tzinfo=datetime.UTC).timestamp()]
    source = ExecCredentialSource(plugin, clock=lambda: now[0])
    assert [source.get(), source.get()] == ["t", "t"]
    assert runs.read_text().count("run") == 1
    now[0] += 60  # at expirationTimestamp
    assert source.get() == "t"
    assert runs.read_text().count("run") == 2
    source.invalidate()  # what the client does after a 401
    assert source.get() == "t"
    assert runs.read_text().count("run") == 3


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("echo 'no such account' >&2; exit 3", "exit code 3: no such account"),
        ("echo '{'", "output is not an ExecCredential"),
        (credential_json({"token": "t"}, "client.authentication.k8s.io/v1beta1"),
         "apiVersion 'client.authentication.k8s.io/v1beta1', expected"),
        (credential_json({}), "neither token nor clientCertificateData"),
        (credential_json({"clientCertificateData": "PEM"}), "go together"),
        (credential_json({"token": "two words"}),
         "status.token: not a usable bearer token: character 4 is U+0020"),
        (credential_json({"token": "t", "expirationTimestamp": "soon"}),
         "status.expirationTimestamp: 'soon' is not RFC 3339"),
    ],
)  # fmt: skip
def test_a_failing_exec_plugin_names_the_field_and_command(
    tmp_path: Path, script: str, message: str
) -> None:
    source = ExecCredentialSource(exec_plugin(tmp_path, script))
    with pytest.raises(CredentialError) as err:
        source.get()
    assert str(err.value).startswith(f"{tmp_path / 'kc'}: users[me].user.exec: "), err.value
    assert message in str(err.value)


def test_a_missing_exec_plugin_shows_the_install_hint_and_requests_fail_cleanly(
    tmp_path: Path,
) -> None:
    user = {"exec": {"apiVersion": V1, "command": "kpp-no-such-plugin",
                     "installHint": "install it from example.org"}}  # fmt: skip
    cfg = load_config(write(tmp_path / "kc", kubeconfig({"server": "http://127.0.0.1:1"}, user)))
    with ApiClient(cfg) as client, pytest.raises(ApiError) as err:
        client.get_json("/api/v1/nodes")
    assert err.value.status is None and err.value.reason == "CredentialError"
    assert "kpp-no-such-plugin: not found" in str(err.value)
    assert "install it from example.org" in str(err.value)


def test_backoff_doubles_to_its_maximum_with_or_without_jitter() -> None:
    plain = Backoff(10, 300, jitter=False)
    assert [plain.next() for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    plain.reset()
    assert plain.next() == 10
    jittered = Backoff(0.8, 30)
    waits = [jittered.next() for _ in range(8)]
    for wait, cap in zip(waits, [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30], strict=True):
        assert cap / 2 <= wait <= cap
    with pytest.raises(ValueError, match="need 0 < initial <= maximum"):
        Backoff(5, 1)
