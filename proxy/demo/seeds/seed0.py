"""Seed 000: pods behind a Service, DNS names, ClusterIP, why ping fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.demo.seeds.notes import OURS, SEEDS, Deviation
from proxy.demo.seeds.parse import (
    ping_summary,
)
from proxy.demo.seeds.walkthrough import (
    PING_IN_MODE,
    Walkthrough,
)


def ping_reason(mode: str) -> str:
    """Why a ping to a ClusterIP gets no reply: in ``mode`` (this run's), then in the
    other mode."""
    other = next(m for m in PING_IN_MODE if m != mode)
    return (
        "A ClusterIP is on no interface: it exists only as IP + protocol + port matches "
        "in the DNAT rules kube-proxy-py writes on every node, and ICMP echo has no port. "
        f"Here, {PING_IN_MODE[mode]}. (In the other mode, {PING_IN_MODE[other]}.)"
    )


# ------------------------------------------------------------------------- seed 000

NODE_PORT_CLAIMS = (
    Deviation(
        "claim",
        "NodePort has no load balancing",
        "a NodePort spreads new connections over all of the Service's pods, on any node "
        "(seed 4 checks it)",
    ),
    Deviation(
        "claim",
        "NodePort does not work on kind",
        "NodePorts work on kind as anywhere; on kind the node addresses are on the Docker "
        "network, reachable from the host on Linux but not from a Mac without "
        "extraPortMappings. In the lab the outside client reaches them (seeds 3, 4)",
    ),
)
"""What seed 000 says of NodePorts, which seeds 003 and 004 check."""


class Seed0(Walkthrough):
    note = SEEDS[0]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.two_deployments,
            self.exec_with_one_dash,
            self.ping_before_the_service,
            self.ping_a_pod_ip,
            self.the_service,
            self.ping_the_service,
            self.why_no_reply,
            self.what_it_says_of_node_ports,
        )

    def two_deployments(self) -> None:
        self.p.step("sleep-1 and sleep-2: two Deployments (the book's practice)")
        self.typed("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.running_pods("app=sleep-1", 1)
        self.running_pods("app=sleep-2", 1)
        ran = self.typed("kubectl get pods -o wide", ours=True)
        self.check(
            "one sleep-1 and one sleep-2 pod run",
            sum("Running" in ln for ln in ran.output.splitlines()) == 2,
        )

    def exec_with_one_dash(self) -> None:
        self.p.step("the note's first command: one dash before the command")
        line = "kubectl exec deploy/sleep-1 - ping -c 1 sleep-2"
        ran = self.typed(line)
        self.differs(
            line,
            "kubectl refuses it: the command must follow `--` (two dashes); with a single "
            "`-` kubectl cannot tell its own flags (`-c` is its --container) from the "
            "command's, and `exec POD COMMAND` without `--` is no longer accepted",
        )
        self.check(
            "kubectl refuses the line and says to use `--`",
            not ran.ok and "Use exec [POD] -- [COMMAND]" in ran.output,
        )

    def ping_before_the_service(self) -> None:
        self.p.step("ping sleep-2 before a Service named sleep-2 exists")
        ran = self.typed("kubectl exec deploy/sleep-1 -- ping -c 1 sleep-2")
        self.p.explain(
            "here DNS really is the reason: only a Service puts a name into cluster DNS, "
            "and there is no Service sleep-2 yet (pods get no DNS name of their own here)"
        )
        self.check(
            "the name sleep-2 does not resolve",
            not ran.ok and "bad address 'sleep-2'" in ran.output,
        )

    def ping_a_pod_ip(self) -> None:
        self.p.step("the Q&A's working command: ping a sleep-2 pod's IP")
        pod_ip = self.pods("app=sleep-2")[0]["status"]["podIP"]
        ran = self.typed(
            "kubectl exec deploy/sleep-1 -- ping -c 2 $(kubectl get pod -l "
            "app=sleep-2 --output jsonpath='{.items[0].status.podIP}')"
        )
        summary = ping_summary(ran.output)
        self.p.explain(
            "a pod IP belongs to a real interface (the pod's eth0): it answers ICMP like "
            "any host, across nodes too (the pod CIDRs are routed between the nodes)"
        )
        self.check(
            f"both echo requests to the pod IP {pod_ip} are answered",
            ran.ok and summary is not None and summary.address == pod_ip and summary.received == 2,
        )

    def the_service(self) -> None:
        self.p.step("the Service sleep-2 (port 80)")
        self.typed("kubectl apply -f sleep/sleep2-service.yaml", ours=True)
        ran = self.typed("kubectl get service sleep-2", ours=True)
        cip = self.cluster_ip("sleep-2")
        self.check(f"sleep-2 has the ClusterIP {cip}", cip in ran.output)

    def ping_the_service(self) -> None:
        self.p.step("the Q&A's failing command: ping sleep-2, the Service")
        cip = self.cluster_ip("sleep-2")
        line = "kubectl exec deploy/sleep-1 -- ping -c 1 sleep-2"
        ran = self.typed(line)
        summary = ping_summary(ran.output)
        self.claim(
            "the Q&A's answer: the ping fails because DNS may not work",
            f"DNS works: ping printed `PING sleep-2 ({cip})`, the ClusterIP. The book's "
            "first answer, crossed out in the note, was the right one: a Service's "
            "ClusterIP does not answer ping (next step)",
        )
        self.check(
            f"sleep-2 resolves to its ClusterIP {cip}, and no echo reply comes",
            not ran.ok and summary is not None and summary.address == cip and summary.received == 0,
        )

    def why_no_reply(self) -> None:
        self.p.step(f"why the ClusterIP does not answer ({self.lab.mode} mode)")
        from proxy.harness import Outcome
        from proxy.harness.probe import Prober

        cip = self.cluster_ip("sleep-2")
        pod = self.pods("app=sleep-1")[0]
        node = pod["spec"]["nodeName"]
        self.typed(self.rules_line(node, cip), ours=True, max_lines=8)
        if self.lab.mode == "nftables":
            self.typed(
                f"kube-proxy-py lab shell {node} -- nft list chain ip kube-proxy cluster-ips-check",
                ours=True,
            )
        self.p.command(
            f"from pod sleep-1 ({pod['status']['podIP']}): one ICMP echo request "
            f"to {cip}, sent by the walkthrough's packet prober{OURS}"
        )
        with Prober(self.netns(f"{self.namespace}/{pod['metadata']['name']}")) as prober:
            echo = prober.icmp_echo(cip, timeout=1.0)
        self.p.result(f"{echo.outcome}: {echo.detail}")
        why = self.explained(
            f"{self.namespace}/{pod['metadata']['name']}", f"{self.namespace}/sleep-2",
            "--proto", "icmp",
        )  # fmt: skip
        self.p.explain(ping_reason(self.lab.mode))
        nft = self.lab.mode == "nftables"
        want = Outcome.REFUSED if nft else Outcome.SILENT
        self.check(f"ping is {want} in {self.lab.mode} mode", echo.outcome is want)
        self.check(
            "explain says " + ("REJECT" if nft else "not a Service") + ", and the kernel agrees",
            why.verdict == ("reject" if nft else "not-a-service") and why.agrees,
        )
        ran = self.typed("kubectl exec deploy/sleep-1 -- wget -O - http://sleep-2", ours=True)
        self.p.explain(
            "TCP port 80 does match the Service: kube-proxy-py DNATs the connection to the "
            "sleep-2 pod, and the pod itself refuses it (the sleep container listens on no "
            "port). Unlike the ping, the connection got to a pod"
        )
        self.check(
            "TCP to sleep-2:80 reaches the pod, which refuses it",
            f"({cip}:80)" in ran.output and "Connection refused" in ran.output,
        )

    def what_it_says_of_node_ports(self) -> None:
        self.p.step("what the note says of NodePorts (seeds 3 and 4 try them)")
        for deviation in NODE_PORT_CLAIMS:
            self.p.differs(deviation)


# ------------------------------------------------------------------------- seed 001
