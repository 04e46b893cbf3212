"""Seed 004: ClusterIP, NodePort and LoadBalancer in namespace lab06."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.demo import seedmanifests as manifests
from proxy.demo.seeds.notes import OURS, SEEDS
from proxy.demo.seeds.parse import (
    Answer,
    in_pool,
    stand_in_answers,
    table_rows,
)
from proxy.demo.seeds.walkthrough import (
    Walkthrough,
)


class Seed4(Walkthrough):
    note = SEEDS[4]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.cluster_ip_by_expose,
            self.cluster_ip_by_yaml,
            self.through_node_ports,
            self.load_balancer,
        )

    def spread(self, url: str, want: set[str]) -> list[Answer]:
        """Fresh connections from the outside client until every pod in ``want``
        answered (at most 3 rounds of 8)."""
        line = (
            f"kube-proxy-py lab shell client -- sh -c 'for i in 1 2 3 4 5 6 7 8; do "
            f"curl -s {url}; done'"
        )
        answers: list[Answer] = []
        for _ in range(3):
            answers += stand_in_answers(self.typed(line, ours=True).output)
            if {a.pod for a in answers} >= want:
                break
        return answers

    def cluster_ip_by_expose(self) -> None:
        self.p.step("a ClusterIP Service with kubectl expose")
        self.typed("kubectl apply -f deployment.yaml")
        self.typed(
            "kubectl rollout status deployment/nginx-deployment -n lab06 --timeout=90s", ours=True
        )
        self.running_pods("app=nginx", 2)
        self.typed("kubectl expose deployment nginx-deployment -n lab06 --name=nginx-service")
        ran = self.typed("kubectl get services -n lab06")
        cip = self.cluster_ip("nginx-service")
        self.serves("node-1", f"{cip}:80")
        web = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {cip}:80", ours=True)
        self.p.explain(
            "expose copied the Deployment's selector (app=nginx) and its containerPort 80 "
            "into a new ClusterIP Service"
        )
        rows = table_rows(ran.output)
        self.check(
            f"nginx-service: ClusterIP {cip}, 80/TCP, answered by a pod",
            rows[:1] != []
            and rows[0].get("TYPE") == "ClusterIP"
            and rows[0].get("PORT(S)") == "80/TCP"
            and len(stand_in_answers(web.output)) == 1,
        )

    def cluster_ip_by_yaml(self) -> None:
        self.p.step("the same with YAML: port 8080 → targetPort 80")
        self.typed("kubectl delete service nginx-service -n lab06", ours=True)
        self.p.explain("the note's two ways make the same Service: remove the first")
        self.typed("kubectl apply -f deployment.yaml")
        self.p.command(f"cat service.yaml{OURS}")
        self.p.result(manifests.LAB06["service.yaml"])
        self.typed("kubectl apply -f service.yaml")
        cip = self.cluster_ip("nginx-service")
        self.typed("kubectl get services -n lab06", ours=True)
        self.serves("node-1", f"{cip}:8080")
        web = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {cip}:8080", ours=True)
        self.p.explain(f"{{service IP}}:port → {{pod IP}}:targetPort: {cip}:8080 → a pod's :80")
        self.check(
            f"{cip}:8080 is answered by a pod's port 80", len(stand_in_answers(web.output)) == 1
        )

    def through_node_ports(self) -> None:
        self.p.step(f"a NodePort Service: nodePort {manifests.NODE_PORT} on every node")
        self.typed("kubectl apply -f service-nodeport.yaml", ours=True)
        self.typed("kubectl get services -n lab06", ours=True)
        pods = {p["metadata"]["name"] for p in self.running_pods("app=nginx", 2)}
        seen: dict[str, set[str]] = {}
        for node, ip in self.lab.nodes.items():
            url = f"http://{ip}:{manifests.NODE_PORT}/"
            self.serves("client", url)
            seen[node] = {a.pod for a in self.spread(url, pods)}
        last = sorted(self.lab.nodes)[-1]
        why = self.explained("client", f"{last}:{manifests.NODE_PORT}")
        self.p.explain(
            "every node accepts the nodePort and spreads new connections over all the "
            "Service's pods, wherever they run (the seed-000 note's `no load balancing` "
            "does not hold); with externalTrafficPolicy Cluster the pods see a node's "
            "address, not the client's"
        )
        self.check(
            f"from outside, each node's :{manifests.NODE_PORT} reaches both pods",
            len(seen) == len(self.lab.nodes) and all(s == pods for s in seen.values()),
        )
        kept = {ep.address for ep in why.why.kept} if why.why is not None else set()
        self.check(
            f"explain on {last}: DNAT to either pod, masqueraded; the kernel agrees",
            why.verdict == "dnat"
            and why.why is not None
            and why.why.masquerade
            and len(kept) == 2
            and why.agrees,
        )

    def load_balancer(self) -> None:
        self.p.step("a LoadBalancer Service, without a cloud")
        self.typed("kubectl apply -f service-loadbalancer.yaml", ours=True)
        lb = self.load_balancer_ip("nginx-loadbalancer")
        ran = self.typed("kubectl get services -n lab06", ours=True)
        self.serves("client", f"http://{lb}/")
        web = self.typed(f"kube-proxy-py lab shell client -- curl -s http://{lb}/", ours=True)
        port = self.node_port("nginx-loadbalancer")
        self.p.explain(
            "the note is right that a LoadBalancer needs something outside Kubernetes to "
            "hand out addresses and bring their traffic to the nodes (a cloud's load "
            "balancer); on the lab's LAN MetalLB does it"
        )
        self.p.explain(
            f"built on NodePort: the Service has a nodePort ({port}) as well as the "
            f"external address {lb}, and kube-proxy-py DNATs both to the pods"
        )
        self.check(
            f"EXTERNAL-IP {lb} from the pool, a nodePort, answered from outside",
            in_pool(lb)
            and f"80:{port}/TCP" in ran.output
            and len(stand_in_answers(web.output)) == 1,
        )
