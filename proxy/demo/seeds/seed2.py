"""Seed 002: discovery by env and DNS, kube-proxy's rules, external services, keep-alive."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.demo.seeds.notes import SEEDS
from proxy.demo.seeds.parse import (
    Answer,
    api_path,
    env_vars,
    nslookup_answers,
    nslookup_cnames,
    ping_summary,
    stand_in_answers,
    table_rows,
)
from proxy.demo.seeds.seed0 import ping_reason
from proxy.demo.seeds.walkthrough import (
    Ran,
    Walkthrough,
)
from proxy.lab import topology as labtopology


class Seed2(Walkthrough):
    note = SEEDS[2]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.environment_variables,
            self.environment_is_fixed_at_start,
            self.dns_name,
            self.ping_curl_telnet,
            self.kube_proxy_rules,
            self.manual_endpoints,
            self.external_name,
            self.keep_alive,
        )

    def prepare(self) -> None:
        super().prepare()
        self.remove_external_db()

    def cleanup(self) -> None:
        self.remove_external_db()
        super().cleanup()

    def remove_external_db(self) -> None:
        """The one object the note puts outside the walkthrough's namespace."""
        self.api("DELETE", api_path("services", "default", "external-db"))

    def environment_variables(self) -> None:
        self.p.step("discovery by environment variables")
        self.typed("kubectl apply -f sleep/sleep2.yaml -f sleep/sleep2-service.yaml", ours=True)
        self.typed("kubectl apply -f sleep/sleep1.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.running_pods("app=sleep-1", 1)
        cip = self.cluster_ip("sleep-2")
        ran = self.typed("kubectl exec deploy/sleep-1 -- env | grep SLEEP_2_SERVICE", ours=True)
        env = env_vars(ran.output)
        self.p.explain(
            "sleep-1's pod started after the Service sleep-2 existed, so the kubelet put "
            "SLEEP_2_SERVICE_HOST/_PORT (the name upper-cased, dashes as underscores) "
            "into its environment"
        )
        self.check(
            f"SLEEP_2_SERVICE_HOST={cip}, SLEEP_2_SERVICE_PORT=80",
            env.get("SLEEP_2_SERVICE_HOST") == cip and env.get("SLEEP_2_SERVICE_PORT") == "80",
        )

    def environment_is_fixed_at_start(self) -> None:
        self.p.step("a Service created later is not in a running pod's environment")
        self.typed("kubectl create service clusterip database --tcp=3306", ours=True)
        cip = self.cluster_ip("database")
        before = env_vars(
            self.typed("kubectl exec deploy/sleep-1 -- env | grep DATABASE", ours=True).output
        )
        self.typed("kubectl rollout restart deployment/sleep-1", ours=True)
        self.typed("kubectl rollout status deployment/sleep-1 --timeout=90s", ours=True)
        self.running_pods("app=sleep-1", 1)
        after = env_vars(
            self.typed("kubectl exec deploy/sleep-1 -- env | grep DATABASE", ours=True).output
        )
        self.p.explain(
            "environment variables are written once, when the container starts: the "
            "running pod never learns of the Service database; its replacement does"
        )
        self.check(
            "no DATABASE_SERVICE_HOST before the restart; after it, the ClusterIP",
            "DATABASE_SERVICE_HOST" not in before
            and after.get("DATABASE_SERVICE_HOST") == cip
            and after.get("DATABASE_SERVICE_PORT") == "3306",
        )

    def dns_name(self) -> None:
        self.p.step("discovery by DNS: {service}.{namespace}.svc.cluster.local")
        cip = self.cluster_ip("sleep-2")
        fqdn = f"sleep-2.{self.namespace}.svc.cluster.local"
        ran = self.typed(f"kubectl exec deploy/sleep-1 -- nslookup {fqdn}", ours=True)
        self.check(
            f"{fqdn} is the ClusterIP {cip}", nslookup_answers(ran.output).get(fqdn) == [cip]
        )

    def ping_curl_telnet(self) -> None:
        self.p.step("a Service IP: no ping, but HTTP and raw TCP (telnet) work")
        self.typed("kubectl apply -f kubia.yaml -f kubia-services.yaml", ours=True)
        self.typed("kubectl rollout status deployment/kubia --timeout=90s", ours=True)
        pods = {p["metadata"]["name"] for p in self.running_pods("app=kubia", 2)}
        self.until(lambda: len(self.endpoint_ips("kubia")) == 2, "kubia's endpoints")
        ping = self.typed("kubectl exec deploy/sleep-1 -- ping -c 1 -W 1 kubia", ours=True)
        web = self.typed("kubectl exec deploy/sleep-1 -- wget -q -O - http://kubia", ours=True)
        raw = self.typed(
            "kubectl exec deploy/sleep-1 -- sh -c \"printf 'GET / HTTP/1.0"
            "\\r\\n\\r\\n' | nc kubia 80\"",
            ours=True,
        )
        self.p.explain(
            "the sleep image has wget rather than curl, and nc sends what telnet would: "
            "both are TCP to port 80, which the rules DNAT to a kubia pod. "
            + ping_reason(self.lab.mode)
        )
        summary = ping_summary(ping.output)
        answered = {a.pod for a in stand_in_answers(web.output + raw.output)}
        self.check(
            "ping gets no reply; wget and nc are answered by kubia pods",
            summary is not None
            and summary.received == 0
            and bool(answered)
            and answered <= pods
            and "200 OK" in raw.output,
        )

    def kube_proxy_rules(self) -> None:
        self.p.step("the Service is an API object; every node's proxy writes its rules")
        cip = self.cluster_ip("kubia")
        ran = self.typed(
            "kubectl get pods -n kube-system -l k8s-app=kube-proxy-py -o wide", ours=True
        )
        per_node = {
            node: self.typed(self.rules_line(node, cip), ours=True, max_lines=8)
            for node in self.lab.nodes
        }
        self.p.explain(
            "the Service lives in the API (etcd), on no node. kube-proxy-py, one pod per "
            "node (the lab's kube-proxy), watches Services and EndpointSlices and writes "
            f"the same rules on every node ({self.lab.mode} mode)"
        )
        self.claim(
            "a request to a ClusterIP goes into the node's kube-proxy, which DNATs it",
            "no packet passes through kube-proxy (nor kube-proxy-py): it only writes "
            "rules, and the kernel's netfilter DNATs each new connection to a pod IP. "
            "Stop the proxy and existing rules keep working; only changes stop arriving",
        )
        running = sum("Running" in ln for ln in ran.output.splitlines())
        self.check(
            f"one proxy pod per node, and rules for {cip} on each",
            running == len(self.lab.nodes) and all(cip in r.output for r in per_node.values()),
        )

    def manual_endpoints(self) -> None:
        self.p.step("a Service without a selector, its Endpoints written by hand")
        self.typed("kubectl apply -f external-service.yaml", ours=True)
        self.until(
            lambda: self.endpoint_ips("external-service") == {"192.168.50.4"},
            "the mirrored EndpointSlice",
        )
        self.typed(
            "kubectl get endpointslices -l kubernetes.io/service-name=external-service", ours=True
        )
        cip = self.cluster_ip("external-service")
        line = f"kubectl exec deploy/sleep-1 -- nslookup db.example.com {cip}"

        def answered() -> Ran | None:
            ran = self.quietly(line)
            return ran if nslookup_answers(ran.output).get("db.example.com") else None

        self.until(answered, "the outside DNS server through the Service")
        ran = self.typed(line, ours=True)
        self.p.explain(
            "the endpoint is outside the cluster: the lab's outside DNS server, "
            "192.168.50.4:53. A DNS query sent to the Service's ClusterIP is DNATed to it "
            "(the Endpoints are mirrored into an EndpointSlice, which is what the proxy "
            "reads); the Endpoints object must have the Service's name. Since v1.33 "
            "Endpoints are deprecated: write the EndpointSlice yourself, labelled "
            "kubernetes.io/service-name=external-service (as `lab demo` does)"
        )
        # the outside resolver has db.example.com's A (and on a dual-stack lab AAAA) record
        db = self.lab.both(labtopology.RESOLVER_IP)
        self.check(
            f"a query to {cip} is answered by the server behind it (192.168.50.4)",
            sorted(nslookup_answers(ran.output).get("db.example.com", [])) == sorted(db),
        )

    def external_name(self) -> None:
        self.p.step("an ExternalName Service: external-db → db.example.com")
        self.p.explain(
            "the note's manifest names namespace default, so this part works there (the "
            "walkthrough's kubectl context switches to default, then back)"
        )
        with self.in_namespace("default"):
            self.typed("kubectl apply -f external-db.yaml", ours=True)
            svc = self.typed("kubectl get svc external-db")
            found = self.typed(
                self.rules_line(next(iter(self.lab.nodes)), "external-db"), ours=True
            )
        name = "external-db.default.svc.cluster.local"
        ran = self.typed(f"kubectl exec deploy/sleep-1 -- nslookup {name}", ours=True)
        self.claim(
            f"{name} is redirected to db.example.com",
            "nothing is redirected: cluster DNS answers the name with a CNAME record, "
            "db.example.com, and the client then looks that up and connects to its "
            "address itself. No ClusterIP, no proxy rule (the grep found none)",
        )
        rows = table_rows(svc.output)
        db = self.lab.both(labtopology.RESOLVER_IP)
        self.check(
            f"EXTERNAL-IP db.example.com; a CNAME to it, then {' and '.join(db)}; no rules",
            rows[:1] != []
            and rows[0].get("EXTERNAL-IP") == "db.example.com"
            and nslookup_cnames(ran.output).get(name) == "db.example.com"
            and sorted(nslookup_answers(ran.output).get("db.example.com", [])) == sorted(db)
            and not found.output.strip(),
        )
        with self.in_namespace("default"):
            self.typed("kubectl delete -f external-db.yaml", ours=True)

    def keep_alive(self) -> None:
        self.p.step("keep-alive sticks to one pod; new connections spread")
        lb = self.load_balancer_ip("kubia-loadbalancer")
        self.typed("kubectl get svc kubia-loadbalancer", ours=True)
        self.serves("client", f"http://{lb}/")
        urls = " ".join([f"http://{lb}/"] * 4)
        one = stand_in_answers(
            self.typed(f"kube-proxy-py lab shell client -- curl -s {urls}", ours=True).output
        )
        loop = (
            f"kube-proxy-py lab shell client -- sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do "
            f"curl -s http://{lb}/; done'"
        )
        separate: list[Answer] = []
        for _ in range(3):  # ten fresh connections all on one of two pods: 1 in 512
            separate += stand_in_answers(self.typed(loop, ours=True).output)
            if len({a.pod for a in separate}) > 1:
                break
        self.p.explain(
            "curl given four URLs sends them over one kept-alive TCP connection: the "
            "proxy picks a pod once per connection (conntrack remembers the DNAT), so all "
            "four go to the same pod, from the same port, with sessionAffinity None. "
            "Separate curls are separate connections and spread over both pods. A "
            "browser keeps its connection alive, hence the note's observation"
        )
        self.check(
            "one connection: one pod; separate connections: both pods",
            len(one) == 4
            and len({(a.pod, a.port) for a in one}) == 1
            and len({a.pod for a in separate}) == 2,
        )
        self.p.explain(
            "the note's Ingress part is not replayed: the lab runs no Ingress controller "
            "(an Ingress object alone does nothing, as the note says)"
        )


# ------------------------------------------------------------------------- seed 003
