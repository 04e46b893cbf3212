"""Seed 001: pod IPs, a Service's ClusterIP and Endpoints, CoreDNS."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from proxy.demo import seedmanifests as manifests
from proxy.demo.seeds.notes import SEEDS
from proxy.demo.seeds.parse import (
    Answer,
    nslookup_answers,
    nslookup_not_found,
    stand_in_answers,
    table_rows,
)
from proxy.demo.seeds.walkthrough import (
    Walkthrough,
)
from proxy.lab import coredns


class Seed1(Walkthrough):
    note = SEEDS[1]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.deployment,
            self.pod_ips_from_the_nodes,
            self.the_service,
            self.cluster_ip_inside_only,
            self.core_dns,
            self.run_with_a_terminal,
            self.resolve_kube_dns,
        )

    def deployment(self) -> None:
        self.p.step("the my-nginx Deployment, two replicas")
        self.typed("cat <<EOF | kubectl apply -f -", heredoc=manifests.MY_NGINX_DEPLOYMENT)
        self.typed("kubectl rollout status deployment/my-nginx --timeout=90s", ours=True)
        pods = self.running_pods("run=my-nginx", 2)
        ran = self.typed("kubectl get pods -l run=my-nginx -o wide")
        ips = {p["status"]["podIP"] for p in pods}
        self.check(
            "two my-nginx pods run, each with its own IP",
            len(ips) == 2 and all(ip in ran.output for ip in ips),
        )
        ran = self.typed("k get po -l run=my-nginx -o yaml | grep podIP")
        self.p.explain(
            "`k` is the note's alias for kubectl. The pod IPs come from each node's pod "
            "CIDR (10.244.1.0/24 on node-1, 10.244.2.0/24 on node-2); the note's "
            "10.46.0.8 and 10.32.0.12 were its cluster's network plugin's"
        )
        self.check("the podIP lines show both pod IPs", all(ip in ran.output for ip in ips))

    def pod_ips_from_the_nodes(self) -> None:
        self.p.step("curl [pod IP]:[containerPort] from a node")
        pods = self.running_pods("run=my-nginx", 2)
        answers: dict[str, list[Answer]] = {}
        for pod in sorted(pods, key=lambda p: str(p["spec"]["nodeName"])):
            ip = pod["status"]["podIP"]
            self.serves("node-1", f"{ip}:80")
            ran = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {ip}:80")
            answers[pod["metadata"]["name"]] = stand_in_answers(ran.output)
        self.differs(
            "curl 10.46.0.8:80 (the nginx welcome page)",
            "the lab's nginx is a stand-in: instead of the welcome page it answers with "
            "the pod's name and the client address it saw",
        )
        self.p.explain(
            "no NAT between a node and a pod: each pod saw the address node-1 sent from, "
            "its bridge address 10.244.1.1 to a pod on node-1, its LAN address "
            "192.168.50.11 to a pod on another node"
        )
        self.check(
            "each pod answers on its own IP, from node-1",
            all(len(a) == 1 and a[0].pod == name for name, a in answers.items())
            and len(answers) == 2,
        )

    def the_service(self) -> None:
        self.p.step("the Service my-nginx: a selector and a ClusterIP")
        self.typed("cat <<EOF | k create -f -", heredoc=manifests.MY_NGINX_SERVICE)
        ips = {p["status"]["podIP"] for p in self.running_pods("run=my-nginx", 2)}
        self.until(lambda: self.endpoint_ips("my-nginx") == ips, "both endpoints")
        ran = self.typed("k describe svc my-nginx")
        cip = self.cluster_ip("my-nginx")
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (ln.partition(":") for ln in ran.output.splitlines())
        )
        endpoints = set(fields.get("Endpoints", "").split(","))
        self.p.explain(
            "the ClusterIP stays the Service's as long as the Service lives; the "
            "Endpoints are the selected pods' IP:targetPort (seed 3 replaces a pod)"
        )
        self.check(
            f"IP {cip}, port 80/TCP to targetPort 80/TCP, endpoints both pods",
            fields.get("IP") == cip
            and fields.get("TargetPort") == "80/TCP"
            and endpoints == {f"{ip}:80" for ip in ips},
        )

    def cluster_ip_inside_only(self) -> None:
        self.p.step("the ClusterIP works on every node, and only inside the cluster")
        cip = self.cluster_ip("my-nginx")
        served: list[Answer] = []
        for node in self.lab.nodes:
            self.serves(node, f"{cip}:80")
            ran = self.typed(f"kube-proxy-py lab shell {node} -- curl -s {cip}:80", ours=True)
            served += stand_in_answers(ran.output)
        outside = self.typed(f"kube-proxy-py lab shell client -- curl -sS -m 2 {cip}:80", ours=True)
        self.p.explain(
            "every node has the same DNAT rules for the ClusterIP; the outside client "
            "(192.168.50.100) has no route to the Service range and no rules: the "
            "address means nothing outside the cluster"
        )
        self.check(
            "each node reaches the ClusterIP; the outside client does not",
            len(served) == len(self.lab.nodes) and not outside.ok,
        )

    def core_dns(self) -> None:
        self.p.step("CoreDNS: its pods and the kube-dns Service")
        pods = self.typed("k get po -n kube-system -l k8s-app=kube-dns")
        svc = self.typed("k get svc -n kube-system kube-dns")
        rows = table_rows(svc.output)
        self.check(
            "two coredns pods Running; kube-dns is 10.96.0.10, 53/UDP,53/TCP,9153/TCP",
            sum("Running" in ln for ln in pods.output.splitlines()) == 2
            and rows[:1]
            == [
                {
                    "NAME": "kube-dns",
                    "TYPE": "ClusterIP",
                    "CLUSTER-IP": "10.96.0.10",
                    "EXTERNAL-IP": "<none>",
                    "PORT(S)": "53/UDP,53/TCP,9153/TCP",
                    "AGE": rows[0].get("AGE", ""),
                }
            ],
        )

    def run_with_a_terminal(self) -> None:
        self.p.step("the note's interactive pod, typed from a script")
        line = "kubectl run curl --image=radial/busyboxplus:curl -ti --rm"
        ran = self.typed(line, stdin=["nslookup kube-dns.kube-system.svc.cluster.local"])
        self.differs(
            line,
            "`-t` asks for a terminal, and a walkthrough has none: kubectl says `Unable to "
            "use a TTY`, cannot attach to a container that has a TTY without one, and "
            "shows its logs instead; the typed line never reaches the shell. Typed at a "
            "terminal it works as in the note. Without a terminal, `-i` alone attaches "
            "stdin (next step); --restart=Never keeps the shell from being restarted",
        )
        self.check("without a terminal `-t` cannot attach", "Unable to use a TTY" in ran.output)
        self.typed("kubectl delete pod curl --grace-period=0 --force --ignore-not-found", ours=True)
        self.p.explain(
            "the pod's shell waits on its TTY, and as PID 1 it ignores SIGTERM: --rm's "
            "delete keeps the pod (and its name) for the whole 30 s grace period; forcing "
            "the deletion frees the name at once (the kubelet then kills the container)"
        )
        self.wait_gone("pods", "curl")

    def resolve_kube_dns(self) -> None:
        self.p.step("resolve kube-dns from a pod in another namespace")
        fqdn = "kube-dns.kube-system.svc.cluster.local"
        ran = self.typed(
            "kubectl run curl --image=radial/busyboxplus:curl -i --rm --restart=Never",
            stdin=[
                f"nslookup {fqdn}",
                "nslookup kube-dns",
                "nslookup kube-dns.kube-system",
                "cat /etc/resolv.conf",
                "curl -s -o /dev/null -w '%{remote_ip}\\n' http://kube-dns.kube-system:9153/",
            ],
        )
        answers = nslookup_answers(ran.output)
        missing = nslookup_not_found(ran.output)
        # kube-dns's ClusterIPs: 10.96.0.10, and fd00:10:96::10 too on a dual-stack lab;
        # the pod's first nameserver is the primary family's
        dns = self.lab.both(coredns.DNS_SERVICE_IP, service=True)
        lines = [ln.strip() for ln in ran.output.splitlines()]
        via_curl = any(ip in lines for ip in dns)
        self.check(
            f"{fqdn} is {' and '.join(dns)}, and the server that answered is {dns[0]}",
            sorted(answers.get(fqdn, [])) == sorted(dns)
            and re.search(rf"^Server:\s+{re.escape(dns[0])}$", ran.output, re.M) is not None,
        )
        self.check(
            f"the bare name kube-dns is not found from namespace {self.namespace}",
            "kube-dns" not in answers and f"kube-dns.{self.namespace}.svc.cluster.local" in missing,
        )
        self.p.explain(
            f"the pod's resolv.conf searches {self.namespace}.svc.cluster.local, "
            "svc.cluster.local and cluster.local (ndots:5): a bare name is looked up in the "
            "pod's own namespace only, so another namespace's Service needs its namespace "
            "in the name"
        )
        if "kube-dns.kube-system" in missing:
            self.differs(
                "nslookup kube-dns.kube-system (the note: [service name].[namespace] resolves)",
                "the lab's busybox 1.35 nslookup tries the search list only for names "
                "without a dot, so it asks for kube-dns.kube-system as it is: NXDOMAIN. "
                "Programs that go through the C library's resolver (curl here, and by the "
                "note's account its image's older busybox 1.22 nslookup) try the search list "
                "first and find it, as the curl line shows",
            )
        self.check(
            f"curl resolves kube-dns.kube-system to {' or '.join(dns)} (the search list)", via_curl
        )
        self.p.explain(
            "the output's format differs from the note's (`Address 1: ...`): the note's "
            "image had busybox 1.22, the lab's stand-in has Debian's busybox 1.35"
        )


# ------------------------------------------------------------------------- seed 002
