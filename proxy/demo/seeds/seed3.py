"""Seed 003: port-forward, ClusterIP, LoadBalancer, ExternalName, headless, endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.demo import seedmanifests as manifests
from proxy.demo.seeds.notes import OURS, SEEDS
from proxy.demo.seeds.parse import (
    in_pool,
    nslookup_answers,
    nslookup_cnames,
    random_number,
    stand_in_answers,
    table_rows,
)
from proxy.demo.seeds.walkthrough import (
    Walkthrough,
)
from proxy.lab import metallb


class Seed3(Walkthrough):
    note = SEEDS[3]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.port_forward,
            self.relabel_a_pod,
            self.apply_two_files,
            self.numbers_without_a_service,
            self.numbers_api_service,
            self.curl_from_a_pod,
            self.load_balancer,
            self.through_node_ports,
            self.external_name,
            self.selectorless_not_headless,
            self.an_address_that_answers,
            self.headless,
            self.endpoints_follow_pods,
        )

    def web_page(self) -> str:
        lb = self.load_balancer_ip("numbers-web")
        return self.typed(
            f"kube-proxy-py lab shell client -- curl -s -m 10 http://{lb}:8080/", ours=True
        ).output

    def port_forward(self) -> None:
        self.p.step("kubectl port-forward deploy/nginx-deploy 8000:80")
        self.typed("kubectl apply -f nginx-deploy.yaml", ours=True)
        self.typed("kubectl rollout status deployment/nginx-deploy --timeout=90s", ours=True)
        pod = self.running_pods("app=nginx-deploy", 1)[0]["metadata"]["name"]
        with self.forwarding("kubectl port-forward deploy/nginx-deploy 8000:80"):
            ran = self.typed(
                "kube-proxy-py lab shell control-plane -- curl -s http://localhost:8000/", ours=True
            )
        answers = stand_in_answers(ran.output)
        self.p.explain(
            "port-forward listens on localhost where kubectl runs (the lab's kubectl runs "
            "in its control-plane namespace, so the request is sent there too) and tunnels "
            "through the API server and the kubelet into the pod: the pod sees the "
            "connection come from its own 127.0.0.1. No Service is involved"
        )
        self.check(
            f"the pod {pod} answers through the forward, from 127.0.0.1",
            len(answers) == 1 and answers[0].pod == pod and answers[0].client == "127.0.0.1",
        )

    def relabel_a_pod(self) -> None:
        self.p.step("change a pod's label: it leaves its Deployment, it does not disappear")
        pod = self.running_pods("app=nginx-deploy", 1)[0]["metadata"]["name"]
        self.typed(f"kubectl label pod {pod} app=nginx-deploy-x --overwrite", ours=True)
        self.running_pods("app=nginx-deploy", 1)
        ran = self.typed("kubectl get pods -L app", ours=True)
        rows = {r["NAME"]: r for r in table_rows(ran.output)}
        self.claim(
            "changing a pod's label makes the pod disappear",
            "it does not: the pod keeps running with its new label, only its ReplicaSet "
            "lets go of it (no longer matches the selector) and starts a new pod to have "
            "its one replica again. From the Deployment's view the pod is gone",
        )
        self.check(
            f"{pod} still runs, as app=nginx-deploy-x, beside a new pod",
            rows.get(pod, {}).get("STATUS") == "Running"
            and rows.get(pod, {}).get("APP") == "nginx-deploy-x"
            and sum(r.get("APP") == "nginx-deploy" for r in rows.values()) == 1,
        )

    def apply_two_files(self) -> None:
        self.p.step("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml")
        line = "kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml"
        ran = self.typed(line)
        self.differs(
            line,
            "the space in `sleep2. yaml` makes two arguments: `-f sleep/sleep2.` and a "
            "stray `yaml`, which kubectl apply refuses (`Unexpected args: [yaml]`) before "
            "applying anything",
        )
        self.check("kubectl refuses the stray argument", not ran.ok and "[yaml]" in ran.output)
        fixed = self.typed("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2.yaml")
        self.typed("kubectl apply -f sleep/sleep2-service.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.check("without the space both Deployments are created", fixed.ok)

    def numbers_without_a_service(self) -> None:
        self.p.step("numbers-api and numbers-web, no Service yet")
        self.typed("kubectl apply -f numbers/api.yaml -f numbers/web.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/numbers-api "
            "deployment/numbers-web --timeout=90s",
            ours=True,
        )
        web = self.running_pods("app=numbers-web", 1)[0]["status"]["podIP"]
        self.serves("node-1", f"http://{web}/")
        ran = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s http://{web}/", ours=True)
        self.p.explain(
            "the web pod asks http://numbers-api/rng for a number; without a Service "
            "named numbers-api the name does not resolve"
        )
        self.check("the page says the RNG service is unavailable", "unavailable" in ran.output)

    def numbers_api_service(self) -> None:
        self.p.step("the numbers-api Service, as the note has it")
        self.p.command(f"cat numbers/api-service.yaml{OURS}")
        self.p.result(manifests.NUMBERS_API_SERVICE_AS_NOTED.expandtabs(8))
        noted = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        self.differs(
            "numbers/api-service.yaml: tab indentation",
            "YAML forbids tabs in indentation: kubectl cannot parse the file ("
            "`found character that cannot start any token`) and nothing is created",
        )
        self.write("numbers/api-service.yaml", manifests.NUMBERS_API_SERVICE_UNTABBED)
        self.p.explain("edited numbers/api-service.yaml: tabs replaced by spaces")
        untabbed = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        self.differs(
            "numbers/api-service.yaml: `type: ClusterIp`",
            "the API server rejects it: Service types are case-sensitive (`ClusterIP`)",
        )
        self.write("numbers/api-service.yaml", manifests.NUMBERS_API_SERVICE)
        self.p.explain("edited numbers/api-service.yaml: type ClusterIP")
        fixed = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        svc = self.typed("kubectl get svc numbers-api")
        web = self.running_pods("app=numbers-web", 1)[0]["status"]["podIP"]
        page = self.serves("node-1", f"http://{web}/", want="Here it is")
        self.p.command(f"kube-proxy-py lab shell node-1 -- curl -s http://{web}/{OURS}")
        self.show(page)
        self.p.explain(
            "the note's `it still does not work... why?`: here the page works as soon as "
            "the Service exists (the web pod resolves the name on every request). The file "
            "as the note shows it cannot have made that Service; if a page still fails, "
            "look at `kubectl get endpoints numbers-api` (does the selector match a pod?)"
        )
        self.check(
            "tabs: a parse error; ClusterIp: rejected; fixed: the page gets a number",
            not noted.ok
            and "cannot start any token" in noted.output
            and not untabbed.ok
            and 'Unsupported value: "ClusterIp"' in untabbed.output
            and fixed.ok
            and "ClusterIP" in svc.output
            and random_number(page) is not None,
        )

    def curl_from_a_pod(self) -> None:
        self.p.step("a throw-away curl pod")
        line = "kubectl run curl --image=curlimages/curl --restart=Never --rm -it -- sh"
        self.differs(
            line,
            "run here with `-i` instead of `-it`: a script has no terminal for `-t` (seed 1 "
            "shows what kubectl does then); `-i` feeds the shell the typed lines",
        )
        ran = self.typed(
            line.replace(" -it ", " -i "),
            ours=True,
            stdin=["curl -s http://numbers-api/rng", "echo"],
        )
        numbers = [ln.strip() for ln in ran.output.splitlines() if ln.strip().isdigit()]
        self.check("the pod's curl gets a number from http://numbers-api/rng", bool(numbers))

    def load_balancer(self) -> None:
        self.p.step("the LoadBalancer Service numbers-web: <pending>, then an address")
        self.typed("kubectl apply -f numbers/web-service.yaml")
        first = self.typed("kubectl get svc numbers-web")
        lb = self.load_balancer_ip("numbers-web")
        then = self.typed("kubectl get svc numbers-web")
        if "<pending>" not in first.output:
            self.p.explain("MetalLB was quicker than the first `kubectl get`: no <pending>")
        self.differs(
            "minikube service numbers-web --url / minikube tunnel",
            "not run: this is no minikube. The lab runs MetalLB (L2), which does what "
            "`minikube tunnel` does there: it gives the Service an EXTERNAL-IP from its "
            f"pool on the lab's LAN ({metallb.POOL_RANGE}; minikube tunnel shows "
            "127.0.0.1) and answers ARP for it from a node",
        )
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.check(
            f"EXTERNAL-IP {lb} from the pool; from outside the page shows a number",
            in_pool(lb) and lb in then.output and random_number(page) is not None,
        )

    def through_node_ports(self) -> None:
        self.p.step("the NodePort under the LoadBalancer, on every node")
        port = self.node_port("numbers-web")
        numbers: list[int | None] = []
        for node, ip in self.lab.nodes.items():
            self.serves("client", f"http://{ip}:{port}/", want="Here it is", timeout=10)
            ran = self.typed(
                f"kube-proxy-py lab shell client -- curl -s -m 10 http://{ip}:{port}/", ours=True
            )
            numbers.append(random_number(ran.output))
            self.p.explain(f"through {node}")
        self.p.explain(
            "a LoadBalancer Service is a NodePort Service plus an external address: the "
            f"nodePort {port} (8080:{port}/TCP) answers on every node, with or without a "
            "pod on it"
        )
        self.check(
            f"port {port} serves the page on each node",
            len(numbers) == len(self.lab.nodes) and None not in numbers,
        )

    def external_name(self) -> None:
        self.p.step("numbers-api as an ExternalName: raw.githubusercontent.com")
        line = "kubectl apply -f numbers-services/api-service-headless.yaml"
        self.typed(line)
        ran = self.typed("kubectl get svc numbers-api", ours=True)
        self.differs(
            line,
            "this is the headless section's file (kiamol's repository names the "
            "ExternalName one api-service-externalName.yaml): the Service stays a "
            "ClusterIP Service, now without a selector, with hand-written Endpoints",
        )
        still = [r.get("TYPE") for r in table_rows(ran.output)] == ["ClusterIP"]
        self.typed(
            "kubectl delete -f numbers-services/api-service-headless.yaml --ignore-not-found",
            ours=True,
        )
        self.typed("kubectl apply -f numbers-services/api-service-externalName.yaml")
        table = self.typed("kubectl get svc")
        row = next((r for r in table_rows(table.output) if r.get("NAME") == "numbers-api"), {})
        lookup = self.typed("kubectl exec deploy/sleep-1 -- nslookup numbers-api", ours=True)
        cname = nslookup_cnames(lookup.output).get(
            f"numbers-api.{self.namespace}.svc.cluster.local"
        )
        page = self.web_page()
        self.p.explain(
            "cluster DNS answers numbers-api with a CNAME to raw.githubusercontent.com, "
            "which the lab's outside DNS knows as 192.168.50.4. The web pod then connects "
            "there, and nothing in the lab serves HTTP at that address: the page says the "
            "API is unavailable. A CNAME changes only the address: the request still says "
            "`Host: numbers-api`, which the real raw.githubusercontent.com would not serve"
        )
        self.claim(
            "the page shows the static text file at the external address",
            "not in the lab: its stand-in for raw.githubusercontent.com answers DNS only",
        )
        self.check(
            "the wrong file leaves a ClusterIP; the right one: ExternalName, a CNAME",
            still
            and row.get("TYPE") == "ExternalName"
            and row.get("EXTERNAL-IP") == "raw.githubusercontent.com"
            and cname == "raw.githubusercontent.com"
            and "unavailable" in page,
        )

    def selectorless_not_headless(self) -> None:
        self.p.step("the note's 'headless' Service: a ClusterIP and an Endpoints object")
        self.typed("kubectl apply -f numbers-services/api-service-headless.yaml")
        svc = self.typed("kubectl get svc numbers-api")
        eps = self.typed("kubectl get endpoints numbers-api")
        self.typed(
            "kubectl get endpointslices -l kubernetes.io/service-name=numbers-api", ours=True
        )
        cip = self.cluster_ip("numbers-api")
        lookup = self.typed("kubectl exec deploy/sleep-1 -- nslookup numbers-api", ours=True)
        self.claim(
            "a headless Service: no selector, so no target pods, deployed with an Endpoints",
            "this Service is not headless: it has a ClusterIP (headless means "
            "`clusterIP: None`, and DNS then answers with the endpoints' addresses). It is "
            "a selectorless Service: its endpoints are the hand-written Endpoints, which "
            "the EndpointSlice mirroring controller copies into an EndpointSlice",
        )
        self.differs(
            "kubectl get endpoints numbers-api",
            "it also prints `Warning: v1 Endpoints is deprecated in v1.33+; use "
            "discovery.k8s.io/v1 EndpointSlice`: the Endpoints API still works, but the "
            "proxies read EndpointSlices",
        )
        self.until(
            lambda: manifests.FAKE_ENDPOINT in self.endpoint_ips("numbers-api"),
            "the mirrored EndpointSlice",
        )
        page = self.web_page()
        self.p.explain(
            f"the web pod connects to the ClusterIP {cip}, which is DNATed to "
            f"{manifests.FAKE_ENDPOINT}:80; no such host exists (the node sends it to "
            "the LAN's router, which drops it), so the web pod's request times out"
        )
        self.check(
            f"ClusterIP {cip}; Endpoints {manifests.FAKE_ENDPOINT}:80; DNS gives the "
            "ClusterIP; the page cannot get a number",
            cip in svc.output
            and f"{manifests.FAKE_ENDPOINT}:80" in eps.output
            and nslookup_answers(lookup.output).get(
                f"numbers-api.{self.namespace}.svc.cluster.local"
            )
            == [cip]
            and "unavailable" in page,
        )

    def an_address_that_answers(self) -> None:
        self.p.step("the same file with an address that answers")
        pod_ip = self.running_pods("app=numbers-api", 1)[0]["status"]["podIP"]
        text = manifests.NUMBERS_API_SELECTORLESS.replace(manifests.FAKE_ENDPOINT, pod_ip)
        self.write("numbers-services/api-service-headless.yaml", text)
        self.p.explain(
            f"edited numbers-services/api-service-headless.yaml: ip {pod_ip}, the "
            "numbers-api pod's, instead of " + manifests.FAKE_ENDPOINT
        )
        self.typed("kubectl apply -f numbers-services/api-service-headless.yaml", ours=True)
        self.until(lambda: self.endpoint_ips("numbers-api") == {pod_ip}, "the new endpoint")
        lb = self.load_balancer_ip("numbers-web")
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.p.explain(
            "a selectorless Service sends its traffic wherever its Endpoints say, inside "
            "or outside the cluster: here the numbers-api pod's IP, so the page works again"
        )
        self.check(
            "with a live address in the Endpoints, the page gets a number",
            random_number(page) is not None,
        )

    def headless(self) -> None:
        self.p.step("a real headless Service: clusterIP None")
        self.typed(
            "kubectl delete -f numbers-services/api-service-headless.yaml --ignore-not-found",
            ours=True,
        )
        self.typed("kubectl scale deployment numbers-api --replicas=2", ours=True)
        pods = {p["status"]["podIP"] for p in self.running_pods("app=numbers-api", 2)}
        self.typed("kubectl apply -f numbers-services/api-service-clusterip-none.yaml", ours=True)
        svc = self.typed("kubectl get svc numbers-api", ours=True)
        name = f"numbers-api.{self.namespace}.svc.cluster.local"
        line = "kubectl exec deploy/sleep-1 -- nslookup numbers-api"
        self.until(
            lambda: set(nslookup_answers(self.quietly(line).output).get(name, [])) == pods,
            "DNS to list both pods",
        )
        lookup = self.typed(line, ours=True)
        lb = self.load_balancer_ip("numbers-web")
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.p.explain(
            "no ClusterIP and no proxy rule: cluster DNS answers with the ready pods' "
            "addresses and the client connects to one of them directly"
        )
        rows = table_rows(svc.output)
        self.check(
            "CLUSTER-IP None; numbers-api resolves to both pod IPs; the page works",
            rows[:1] != []
            and rows[0].get("CLUSTER-IP") == "None"
            and set(nslookup_answers(lookup.output).get(name, [])) == pods
            and random_number(page) is not None,
        )

    def endpoints_follow_pods(self) -> None:
        self.p.step("a new pod, a new endpoint; the ClusterIP stays")
        cip = self.cluster_ip("sleep-2")
        before = self.typed("kubectl get endpoints sleep-2")
        old = self.endpoint_ips("sleep-2")
        self.typed("kubectl delete pods -l app=sleep-2")
        self.until(
            lambda: len(new := self.endpoint_ips("sleep-2")) == 1 and new != old,
            "the replacement pod's endpoint",
        )
        after = self.typed("kubectl get endpoints sleep-2")
        new = self.endpoint_ips("sleep-2")
        self.p.explain(
            "the Deployment replaced the pod (new IP); the endpoints controller updated "
            "the Endpoints and EndpointSlice, the proxies their rules; the Service and "
            "its ClusterIP did not change"
        )
        self.check(
            f"endpoints {sorted(old)} → {sorted(new)}; ClusterIP still {cip}",
            old != new
            and all(ip in before.output for ip in old)
            and all(ip in after.output for ip in new)
            and self.cluster_ip("sleep-2") == cip,
        )


# ------------------------------------------------------------------------- seed 004
