"""The pure parts of ``kube-proxy-py lab seeds``: reading the notes' command lines, the
tools' outputs, the manifests, and how a walkthrough shows and runs a typed line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.demo import seedmanifests as m
from proxy.demo.seeds.notes import SEEDS, Deviation, SeedsError
from proxy.demo.seeds.parse import (
    Answer,
    PingSummary,
    Typed,
    api_path,
    env_vars,
    expand_substitutions,
    find_substitution,
    grep_lines,
    in_pool,
    namespace_kubeconfig,
    nslookup_answers,
    nslookup_cnames,
    nslookup_not_found,
    parse_typed,
    ping_summary,
    proxy_mode,
    random_number,
    seed_numbers,
    split_pipeline,
    stand_in_answers,
    table_rows,
    without_kubeconfig_flag,
)
from proxy.demo.seeds.run import WALKTHROUGHS, summarize, write_manifests
from proxy.demo.seeds.seed0 import ping_reason
from proxy.demo.seeds.walkthrough import LabView, Ran, SeedPresenter, SeedResult, Walkthrough
from proxy.lab import state as labstate

# Outputs captured on the lab (busybox 1.35 in the stand-in images).
NSLOOKUP_SEARCH = """\
Server:\t\t10.96.0.10
Address:\t10.96.0.10:53

** server can't find sleep-2.cluster.local: NXDOMAIN

Name:\tsleep-2.try.svc.cluster.local
Address: 10.96.220.233

** server can't find sleep-2.svc.cluster.local: NXDOMAIN
"""
NSLOOKUP_CNAME = """\
Server:\t\t10.96.0.10
Address:\t10.96.0.10:53

external-db.try.svc.cluster.local\tcanonical name = db.example.com
Name:\tdb.example.com
Address: 192.168.50.4

external-db.try.svc.cluster.local\tcanonical name = db.example.com
"""
NSLOOKUP_DOTTED = """\
Server:\t\t10.96.0.10
Address:\t10.96.0.10:53

** server can't find kube-dns.kube-system: NXDOMAIN

** server can't find kube-dns.kube-system: NXDOMAIN
"""
# The note's (seed 001) output, from busybox 1.22.
NSLOOKUP_OLD = """\
Server:    10.96.0.10
Address 1: 10.96.0.10 kube-dns.kube-system.svc.cluster.local

Name:      kube-dns.kube-system.svc.cluster.local
Address 1: 10.96.0.10 kube-dns.kube-system.svc.cluster.local
"""
NSLOOKUP_HEADLESS = """\
Name:\tnumbers-api.seed-003.svc.cluster.local
Address: 10.244.1.16
Name:\tnumbers-api.seed-003.svc.cluster.local
Address: 10.244.2.13
"""
PING_NONE = """\
PING sleep-2 (10.96.220.233): 56 data bytes

--- sleep-2 ping statistics ---
1 packets transmitted, 0 packets received, 100% packet loss
"""
PING_IPUTILS = """\
PING 10.244.2.4 (10.244.2.4) 56(84) bytes of data.
64 bytes from 10.244.2.4: icmp_seq=1 ttl=63 time=0.1 ms

--- 10.244.2.4 ping statistics ---
2 packets transmitted, 2 received, 0% packet loss, time 1001ms
"""


def test_seed_numbers_default_order_and_unknown() -> None:
    assert seed_numbers(None) == [0, 1, 2, 3, 4]
    assert seed_numbers([3, 1, 3]) == [1, 3]
    with pytest.raises(SeedsError, match="no seed 5, 7: the notes are numbered 0 to 4"):
        seed_numbers([7, 5, 0])


def test_seeds_are_the_five_notes_each_with_a_walkthrough_and_namespace() -> None:
    assert [n.number for n in SEEDS] == [0, 1, 2, 3, 4]
    assert all(n.file.startswith(f"00{n.number}_") for n in SEEDS)
    assert set(WALKTHROUGHS) == {0, 1, 2, 3, 4}
    assert all(WALKTHROUGHS[n.number].note is n for n in SEEDS)
    assert len({n.namespace for n in SEEDS}) == 5
    assert SEEDS[4].namespace == "lab06"  # the note's own


def test_split_pipeline_ignores_quoted_bars() -> None:
    assert split_pipeline("k get po -o yaml | grep podIP") == ["k get po -o yaml", "grep podIP"]
    assert split_pipeline("sh -c 'a | b' | grep x") == ["sh -c 'a | b'", "grep x"]
    assert split_pipeline('echo "|"') == ['echo "|"']


def test_substitution_runs_the_inner_command() -> None:
    line = (
        "kubectl exec deploy/sleep-1 -- ping -c 2 $(kubectl get pod -l app=sleep-2 "
        "--output jsonpath='{.items[0].status.podIP}')"
    )
    ran: list[str] = []

    def run(inner: str) -> str:
        ran.append(inner)
        return "10.244.2.4\n"

    assert expand_substitutions(line, run) == "kubectl exec deploy/sleep-1 -- ping -c 2 10.244.2.4"
    assert ran == ["kubectl get pod -l app=sleep-2 --output jsonpath='{.items[0].status.podIP}'"]


def test_substitution_skips_single_quotes_and_nests() -> None:
    assert find_substitution("sh -c 'for i in $(seq 3); do x; done'") is None
    line = "echo $(a $(b))"
    assert find_substitution(line) == (5, len(line))
    assert expand_substitutions("x $(y)", lambda inner: inner.upper()) == "x Y"
    with pytest.raises(ValueError, match="unbalanced"):
        find_substitution("echo $(a")


def test_parse_typed_kubectl_alias_lab_forms_and_grep() -> None:
    assert parse_typed("k get po -l run=my-nginx -o yaml | grep podIP") == Typed(
        "kubectl", ("get", "po", "-l", "run=my-nginx", "-o", "yaml"), grep="podIP"
    )
    assert parse_typed("kubectl exec deploy/sleep-1 - ping -c 1 sleep-2").args == (
        "exec",
        "deploy/sleep-1",
        "-",
        "ping",
        "-c",
        "1",
        "sleep-2",
    )
    assert parse_typed("kube-proxy-py lab kubectl -- get nodes").args == ("get", "nodes")
    shell = parse_typed("kube-proxy-py lab shell node-1 -- curl -s 10.244.1.5:80")
    assert (shell.program, shell.target, shell.args) == (
        "shell",
        "node-1",
        ("curl", "-s", "10.244.1.5:80"),
    )
    # a space inside a file name makes two words, as in a shell
    assert parse_typed("kubectl apply -f sleep/sleep2. yaml").args[-2:] == (
        "sleep/sleep2.",
        "yaml",
    )


@pytest.mark.parametrize(
    "line",
    [
        "minikube tunnel",
        "kubectl get po | sort",
        "kubectl get po | grep a | grep b",
        "kube-proxy-py lab shell node-1 curl x",
    ],
)
def test_parse_typed_refuses_what_it_cannot_run(line: str) -> None:
    with pytest.raises(ValueError):
        parse_typed(line)


def test_grep_lines_keeps_matching_lines() -> None:
    text = "    podIP: 10.0.0.1\n    phase: Running\n    podIPs:\n"
    assert grep_lines(text, "podIP") == "    podIP: 10.0.0.1\n    podIPs:\n"
    assert grep_lines(text, "nothing") == ""


def test_namespace_kubeconfig_copies_no_credential() -> None:
    admin = {
        "clusters": [{"name": "kpp-lab", "cluster": {"certificate-authority-data": "CA"}}],
        "users": [{"name": "kubernetes-admin", "user": {"client-key-data": "SECRET"}}],
        "contexts": [
            {"name": "other", "context": {"cluster": "x", "user": "y"}},
            {"name": "kpp-lab", "context": {"cluster": "kpp-lab", "user": "kubernetes-admin"}},
        ],
        "current-context": "kpp-lab",
    }
    cfg = namespace_kubeconfig(admin, "seed-001")
    assert cfg["current-context"] == "kpp-lab/seed-001"
    assert cfg["contexts"] == [
        {
            "name": "kpp-lab/seed-001",
            "context": {"cluster": "kpp-lab", "user": "kubernetes-admin", "namespace": "seed-001"},
        }
    ]
    assert "SECRET" not in repr(cfg) and "users" not in cfg and "clusters" not in cfg


def test_without_kubeconfig_flag() -> None:
    argv = ["ip", "netns", "exec", "ns", "kubectl", "--kubeconfig=/a", "--cache-dir=/c", "get"]
    assert without_kubeconfig_flag(argv) == [
        "ip",
        "netns",
        "exec",
        "ns",
        "kubectl",
        "--cache-dir=/c",
        "get",
    ]


def test_nslookup_answers_in_both_busybox_formats() -> None:
    assert nslookup_answers(NSLOOKUP_SEARCH) == {"sleep-2.try.svc.cluster.local": ["10.96.220.233"]}
    assert nslookup_answers(NSLOOKUP_OLD) == {
        "kube-dns.kube-system.svc.cluster.local": ["10.96.0.10"]
    }
    assert nslookup_answers(NSLOOKUP_HEADLESS) == {
        "numbers-api.seed-003.svc.cluster.local": ["10.244.1.16", "10.244.2.13"]
    }
    assert nslookup_answers(NSLOOKUP_DOTTED) == {}  # the Server block is no answer


def test_nslookup_cnames_and_not_found() -> None:
    assert nslookup_cnames(NSLOOKUP_CNAME) == {
        "external-db.try.svc.cluster.local": "db.example.com"
    }
    assert nslookup_answers(NSLOOKUP_CNAME) == {"db.example.com": ["192.168.50.4"]}
    assert nslookup_not_found(NSLOOKUP_DOTTED) == {"kube-dns.kube-system"}
    assert nslookup_not_found(NSLOOKUP_SEARCH) == {
        "sleep-2.cluster.local",
        "sleep-2.svc.cluster.local",
    }


def test_ping_summary() -> None:
    assert ping_summary(PING_NONE) == PingSummary("sleep-2", "10.96.220.233", 1, 0)
    assert ping_summary(PING_IPUTILS) == PingSummary("10.244.2.4", "10.244.2.4", 2, 2)
    assert ping_summary("ping: bad address 'sleep-2'\n") is None


def test_stand_in_answers_and_env_vars() -> None:
    out = "kubia-1 10.244.1.1:50420\nHTTP/1.1 200 OK\nkubia-2 192.168.50.11:7\n"
    assert stand_in_answers(out) == [
        Answer("kubia-1", "10.244.1.1", 50420),
        Answer("kubia-2", "192.168.50.11", 7),
    ]
    env = env_vars("SLEEP_2_SERVICE_HOST=10.96.0.5\nSLEEP_2_SERVICE_PORT=80\nnot a var\nX=a=b\n")
    assert env == {"SLEEP_2_SERVICE_HOST": "10.96.0.5", "SLEEP_2_SERVICE_PORT": "80", "X": "a=b"}


def test_proxy_mode_from_the_config_map() -> None:
    assert proxy_mode("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nmode: nftables\n") == (
        "nftables"
    )
    assert proxy_mode('mode: ""\n') == "iptables"  # upstream's default on Linux
    assert proxy_mode("") == "iptables"


def test_random_number_and_pool() -> None:
    assert random_number("<p>Here it is: <b>65</b></p>") == 65
    assert random_number("<p>RNG service unavailable!</p>") is None
    assert in_pool("192.168.50.200") and in_pool("192.168.50.250")
    assert not in_pool("192.168.50.251") and not in_pool("<pending>")


def test_table_rows() -> None:
    out = (
        "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\n"
        "NAME          TYPE           CLUSTER-IP   EXTERNAL-IP                 PORT(S)   AGE\n"
        "numbers-api   ExternalName   <none>       raw.githubusercontent.com   <none>    6s\n"
    )
    assert table_rows(out) == [
        {
            "NAME": "numbers-api",
            "TYPE": "ExternalName",
            "CLUSTER-IP": "<none>",
            "EXTERNAL-IP": "raw.githubusercontent.com",
            "PORT(S)": "<none>",
            "AGE": "6s",
        }
    ]
    assert table_rows("") == []


def test_ping_reason_explains_this_mode_first_then_the_other() -> None:
    nft, ipt = ping_reason("nftables"), ping_reason("iptables")
    assert "Here, nftables mode rejects" in nft and "other mode, iptables mode has no rule" in nft
    assert "Here, iptables mode has no rule" in ipt and "other mode, nftables mode rejects" in ipt


# -- the manifests -----------------------------------------------------------------------


def test_manifests_mirror_the_notes() -> None:
    sleep2 = yaml.safe_load(m.SLEEP_2_SERVICE)
    assert sleep2["metadata"]["name"] == "sleep-2" and sleep2["spec"]["ports"] == [{"port": 80}]
    web = yaml.safe_load(m.NUMBERS_WEB_SERVICE)
    assert web["spec"]["type"] == "LoadBalancer" and web["spec"]["ports"][0]["port"] == 8080
    assert yaml.safe_load(m.MY_NGINX_DEPLOYMENT)["spec"]["replicas"] == 2
    assert yaml.safe_load(m.LAB06_DEPLOYMENT)["metadata"] == {
        "name": "nginx-deployment",
        "namespace": "lab06",
    }
    node_port = yaml.safe_load(m.LAB06["service-nodeport.yaml"])
    assert node_port["spec"]["ports"] == [{"port": 80, "targetPort": 80, "nodePort": 30123}]
    external = yaml.safe_load(m.EXTERNAL_DB)
    assert external["spec"] == {"type": "ExternalName", "externalName": "db.example.com"}
    assert yaml.safe_load(m.NUMBERS_API_EXTERNAL_NAME)["spec"]["externalName"] == (
        "raw.githubusercontent.com"
    )
    service, endpoints = yaml.safe_load_all(m.NUMBERS_API_SELECTORLESS)
    assert "selector" not in service["spec"] and service["spec"]["type"] == "ClusterIP"
    assert endpoints["kind"] == "Endpoints" and endpoints["metadata"]["name"] == "numbers-api"
    assert endpoints["subsets"][0]["addresses"] == [{"ip": "192.168.123.234"}]
    assert yaml.safe_load(m.NUMBERS_API_HEADLESS)["spec"]["clusterIP"] == "None"


def test_the_notes_broken_service_stays_broken_then_is_fixed_in_two_steps() -> None:
    assert "\t" in m.NUMBERS_API_SERVICE_AS_NOTED
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(m.NUMBERS_API_SERVICE_AS_NOTED)
    untabbed = yaml.safe_load(m.NUMBERS_API_SERVICE_UNTABBED)
    assert untabbed["spec"]["type"] == "ClusterIp"
    fixed = yaml.safe_load(m.NUMBERS_API_SERVICE)
    assert fixed["spec"] == {
        "ports": [{"port": 80}],
        "selector": {"app": "numbers-api"},
        "type": "ClusterIP",
    }


def test_every_file_a_walkthrough_writes_parses_but_the_broken_one() -> None:
    for number, files in m.FILES.items():
        for path, text in files.items():
            assert not path.startswith("/") and ".." not in path
            if text is m.NUMBERS_API_SERVICE_AS_NOTED:
                continue
            docs = [d for d in yaml.safe_load_all(text) if d]
            assert docs and all("kind" in d for d in docs), (number, path)


# -- presenting and typed lines -----------------------------------------------------------


def test_presenter_counts_checks_and_records_deviations() -> None:
    out = io.StringIO()
    p = SeedPresenter(out=out, color=False)
    p.step("one")
    p.check(True, "fine")
    p.check(False, "broken")
    p.differs(Deviation("command", "kubectl x", "because"))
    text = out.getvalue()
    assert (p.passed, p.failures) == (1, ["step 1: broken"])
    assert "≠ the note's command: kubectl x\n    because" in text and "\033[" not in text


def test_summary_lists_counts_failures_and_deviations() -> None:
    lab = LabView(
        labstate.LabState("kpp-lab-x", "/tmp/x", "iptables", 2, False), "iptables", {}, "/dev/null"
    )
    results = [
        SeedResult(
            SEEDS[0],
            3,
            [],
            [Deviation("command", "a", "why a"), Deviation("claim", "b", "why b")],
            1.0,
        ),
        SeedResult(SEEDS[1], 1, ["step 2: x"], [], 2.0),
    ]
    out = io.StringIO()
    summarize(results, lab, out)
    text = out.getvalue()
    assert "Summary (iptables mode, lab kpp-lab-x)" in text
    assert "seed 0 (000_ae18fa0a313f7d33.txt): 3 checks passed, 0 failed" in text
    assert "seed 1 (001_11b7ff294316ef06.txt): 1 checks passed, 1 failed" in text
    assert "FAILED step 2: x" in text
    assert "  commands:\n    - a: why a\n  statements:\n    - b: why b" in text


class FakeRun(Walkthrough):
    """A walkthrough whose commands are answered from a table."""

    note = SEEDS[0]
    answers: dict[str, str]
    calls: list[tuple[Typed, str | None]]

    def execute(self, typed: Typed, stdin: str | None = None, timeout: float = 120) -> Ran:
        self.calls.append((typed, stdin))
        key = " ".join(typed.args)
        out = self.answers.get(key, "")
        if typed.grep is not None:
            out = grep_lines(out, typed.grep)
        return Ran(("fake",), 0, out)


def fake_walkthrough(tmp_path: Path, out: io.StringIO) -> FakeRun:
    lab = LabView(
        labstate.LabState("kpp-lab-x", "/tmp/x", "nftables", 2, False),
        "nftables",
        {"node-1": "192.168.50.11"},
        "/dev/null",
    )
    run = FakeRun(lab, SeedPresenter(out=out, color=False), tmp_path)
    run.calls = []
    run.answers = {}
    return run


def test_typed_shows_the_line_as_typed_and_runs_it_expanded(tmp_path: Path) -> None:
    out = io.StringIO()
    run = fake_walkthrough(tmp_path, out)
    run.answers = {
        "get pod -l app=sleep-2 --output jsonpath={.items[0].status.podIP}": "10.244.2.4",
        "exec deploy/sleep-1 -- ping -c 2 10.244.2.4": PING_IPUTILS,
    }
    line = (
        "kubectl exec deploy/sleep-1 -- ping -c 2 $(kubectl get pod -l app=sleep-2 "
        "--output jsonpath='{.items[0].status.podIP}')"
    )
    ran = run.typed(line)
    assert ran.output == PING_IPUTILS
    assert f"  $ {line}\n" in out.getvalue() and "2 received" in out.getvalue()
    assert [c[0].args[0] for c in run.calls] == ["get", "exec"]


def test_typed_feeds_stdin_and_heredocs_and_marks_our_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    run = fake_walkthrough(tmp_path, out)
    run.typed(
        "kubectl run curl --image=radial/busyboxplus:curl -i --rm --restart=Never",
        stdin=["nslookup kube-dns", "exit"],
        ours=True,
    )
    run.typed("cat <<EOF | kubectl apply -f -", heredoc="kind: Service\n")
    (first, stdin1), (second, stdin2) = run.calls
    assert stdin1 == "nslookup kube-dns\nexit\n" and first.args[0] == "run"
    assert stdin2 == "kind: Service\n" and second.args == ("apply", "-f", "-")
    text = out.getvalue()
    assert (
        "--restart=Never <<'EOF'   # not in the note\n    nslookup kube-dns\n    exit\n    EOF"
        in text
    )
    assert "  $ cat <<EOF | kubectl apply -f -\n    kind: Service\n    EOF\n" in text


def test_a_walkthrough_writes_its_files_under_the_notes_names(tmp_path: Path) -> None:
    fake_walkthrough(tmp_path, io.StringIO())
    assert (tmp_path / "sleep" / "sleep2-service.yaml").read_text() == m.SLEEP_2_SERVICE
    assert (tmp_path / "sleep" / "sleep1.yaml").exists()


def test_cli_refuses_an_unknown_seed_before_touching_a_lab(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "lab", "seeds", "9", "--state-dir", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "lab seeds: no seed 9: the notes are numbered 0 to 4" in done.stderr
    assert not (tmp_path / "no").exists()


def test_write_manifests_puts_each_seed_s_files_under_its_names(tmp_path: Path) -> None:
    written = write_manifests(tmp_path, [1, 3])
    assert tmp_path / "seed-1" / "my-nginx.yaml" in written
    assert (tmp_path / "seed-3" / "numbers" / "api-service.yaml").read_text() == (
        m.NUMBERS_API_SERVICE_AS_NOTED
    )
    assert len(written) == len(m.FILES[1]) + len(m.FILES[3])
    assert not (tmp_path / "seed-0").exists()


def test_api_paths() -> None:
    assert api_path("namespaces", name="seed-000") == "/api/v1/namespaces/seed-000"
    assert api_path("services", "default", "external-db") == (
        "/api/v1/namespaces/default/services/external-db"
    )
    assert api_path("endpointslices", "seed-003", selector="kubernetes.io/service-name=x") == (
        "/apis/discovery.k8s.io/v1/namespaces/seed-003/endpointslices"
        "?labelSelector=kubernetes.io%2Fservice-name%3Dx"
    )
    assert api_path("pods", "lab06", selector="app=nginx") == (
        "/api/v1/namespaces/lab06/pods?labelSelector=app%3Dnginx"
    )
