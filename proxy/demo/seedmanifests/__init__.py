"""The manifests the learners' notes apply, for ``kube-proxy-py lab seeds``.

Where a note shows a manifest, it is here as the note has it (comments and mistakes
included: seed 003's ``numbers/api-service.yaml`` keeps its tab indentation and
``type: ClusterIp``); where a note only names a file (``sleep/sleep1.yaml``,
``numbers/web-service.yaml``, ``deployment.yaml`` ...), we wrote one that does what the
note says it does, with the images the lab serves. Each walkthrough writes its files
into a scratch directory and runs kubectl there, so ``kubectl apply -f sleep/sleep1.yaml``
works as typed.

Ours, not the notes': readiness probes on the nginx stand-ins that ``kubectl
port-forward`` or an outside client reaches (a pod is Ready only once it serves), and
``terminationGracePeriodSeconds`` kept short so a walkthrough cleans up quickly.
"""

from __future__ import annotations

from collections.abc import Mapping

SLEEP_1 = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleep-1
spec:
  selector:
    matchLabels:
      app: sleep-1
  template:
    metadata:
      labels:
        app: sleep-1
    spec:
      containers:
        - name: sleep
          image: kiamol/ch03-sleep
"""

SLEEP_2 = SLEEP_1.replace("sleep-1", "sleep-2")

SLEEP_2_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: sleep-2 # 도메인 네임
spec: # 셀레겉와 포트가 포함
  selector:
    app: sleep-2
  ports:
    - port: 80
"""
"""Seed 003's ``sleep2-service.yaml``, as the note shows it."""

SLEEP = {
    "sleep/sleep1.yaml": SLEEP_1,
    "sleep/sleep2.yaml": SLEEP_2,
    "sleep/sleep2-service.yaml": SLEEP_2_SERVICE,
}

MY_NGINX_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-nginx
spec:
  selector:
    matchLabels:
      run: my-nginx
  replicas: 2
  template:
    metadata:
      labels:
        run: my-nginx
    spec:
      containers:
      - name: my-nginx
        image: nginx
        ports:
        - containerPort: 80
"""
"""Seed 001's first heredoc."""

MY_NGINX_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: my-nginx
  labels:
    run: my-nginx
spec:
  ports:
  - port: 80
    protocol: TCP
  selector:
    run: my-nginx
"""
"""Seed 001's second heredoc."""


def _web(name: str, replicas: int, labels: str = "app") -> str:
    """A Deployment of the nginx stand-in, Ready once it serves."""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      {labels}: {name}
  template:
    metadata:
      labels:
        {labels}: {name}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: nginx
          image: nginx
          ports:
            - containerPort: 80
          readinessProbe:
            httpGet:
              path: /
              port: 80
            periodSeconds: 1
"""


KUBIA_SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: kubia
spec:
  selector:
    app: kubia
  ports:
    - port: 80
      targetPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: kubia-loadbalancer
spec:
  type: LoadBalancer
  selector:
    app: kubia
  ports:
    - port: 80
      targetPort: 80
"""

EXTERNAL_SERVICE = """\
# A Service without a selector: no controller writes its endpoints, we do.
apiVersion: v1
kind: Service
metadata:
  name: external-service
spec:
  ports:
    - name: dns
      port: 53
      protocol: UDP
---
# Same name as the Service. The address is outside the cluster: the lab's outside
# DNS server (the one that knows db.example.com).
apiVersion: v1
kind: Endpoints
metadata:
  name: external-service
subsets:
  - addresses:
      - ip: 192.168.50.4
    ports:
      - name: dns
        port: 53
        protocol: UDP
"""

EXTERNAL_DB = """\
apiVersion: v1
kind: Service
metadata:
  name: external-db
  namespace: default
spec:
  type: ExternalName
  externalName: db.example.com
"""
"""Seed 002's ExternalName Service, as the note shows it."""

NUMBERS_API = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: numbers-api
spec:
  selector:
    matchLabels:
      app: numbers-api
  template:
    metadata:
      labels:
        app: numbers-api
        version: v1
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: api
          image: kiamol/ch03-numbers-api
"""

NUMBERS_WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: numbers-web
spec:
  selector:
    matchLabels:
      app: numbers-web
  template:
    metadata:
      labels:
        app: numbers-web
        version: v1
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: kiamol/ch03-numbers-web
"""

NUMBERS_API_SERVICE_AS_NOTED = (
    "apiVersion: v1\n"
    "kind: Service\n"
    "metadata:\n"
    "  name: numbers-api  # 도메인 네임\n"
    "spec: # 셀렉터와 포트가 포함\n"
    "\tports:\n"
    "\t\t- port: 80\n"
    "  selector:\n"
    "    app: numbers-api \n"
    "\ttype: ClusterIp\n"
)
"""Seed 003's numbers-api Service exactly as the note shows it: tabs and all."""

NUMBERS_API_SERVICE_UNTABBED = NUMBERS_API_SERVICE_AS_NOTED.replace("\t\t", "    ").replace(
    "\t", "  "
)
"""The same with the tabs replaced by spaces (still ``type: ClusterIp``)."""

NUMBERS_API_SERVICE = NUMBERS_API_SERVICE_UNTABBED.replace("ClusterIp", "ClusterIP")
"""The same with the type spelled as the API spells it."""

NUMBERS_WEB_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: numbers-web
spec:
  ports:
    - port: 8080
      targetPort: 80
  selector:
    app: numbers-web
  type: LoadBalancer
"""

NUMBERS_API_EXTERNAL_NAME = """\
apiVersion: v1
kind: Service
metadata:
  name: numbers-api #클러스터 안에 쓰이는 로컬 도메인
spec:
  type: ExternalName
  externalName: raw.githubusercontent.com #외부 도메인
"""
"""Seed 003's ExternalName Service, as the note shows it."""

FAKE_ENDPOINT = "192.168.123.234"

NUMBERS_API_SELECTORLESS = f"""\
apiVersion: v1
kind: Service
metadata:
  name: numbers-api
spec:
  type: ClusterIP
  ports:
    - port: 80
---
kind: Endpoints
apiVersion: v1
metadata:
  name: numbers-api
subsets:
  - addresses: # 정적 IP 주소 목록
      - ip: {FAKE_ENDPOINT}
    ports:
      - port: 80
"""
"""Seed 003's "headless" Service and its Endpoints, as the note shows them."""

NUMBERS_API_HEADLESS = """\
# A headless Service: clusterIP None. Cluster DNS answers with the addresses of the
# pods the selector picks; kube-proxy writes no rule for it.
apiVersion: v1
kind: Service
metadata:
  name: numbers-api
spec:
  clusterIP: None
  selector:
    app: numbers-api
  ports:
    - port: 80
"""

NUMBERS = {
    "numbers/api.yaml": NUMBERS_API,
    "numbers/web.yaml": NUMBERS_WEB,
    "numbers/api-service.yaml": NUMBERS_API_SERVICE_AS_NOTED,
    "numbers/web-service.yaml": NUMBERS_WEB_SERVICE,
    "numbers-services/api-service-externalName.yaml": NUMBERS_API_EXTERNAL_NAME,
    "numbers-services/api-service-headless.yaml": NUMBERS_API_SELECTORLESS,
    "numbers-services/api-service-clusterip-none.yaml": NUMBERS_API_HEADLESS,
}

LAB06_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  namespace: lab06
spec:
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: nginx
          image: nginx
          ports:
            - containerPort: 80
          readinessProbe:
            httpGet:
              path: /
              port: 80
            periodSeconds: 1
"""


def _lab06_service(name: str, kind: str, port: int, node_port: int | None = None) -> str:
    node_port_line = f"\n      nodePort: {node_port}" if node_port else ""
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: lab06
spec:
  type: {kind}
  selector:
    app: nginx
  ports:
    - port: {port}          # the port the Service exposes
      targetPort: 80      # the port the pods expose{node_port_line}
"""


NODE_PORT = 30123
"""Seed 004's example nodePort."""

LAB06 = {
    "deployment.yaml": LAB06_DEPLOYMENT,
    "service.yaml": _lab06_service("nginx-service", "ClusterIP", 8080),
    "service-nodeport.yaml": _lab06_service("nginx-nodeport", "NodePort", 80, NODE_PORT),
    "service-loadbalancer.yaml": _lab06_service("nginx-loadbalancer", "LoadBalancer", 80),
}

FILES: Mapping[int, Mapping[str, str]] = {
    0: SLEEP,
    1: {"my-nginx.yaml": MY_NGINX_DEPLOYMENT, "my-nginx-service.yaml": MY_NGINX_SERVICE},
    2: {
        **SLEEP,
        "kubia.yaml": _web("kubia", 2),
        "kubia-services.yaml": KUBIA_SERVICES,
        "external-service.yaml": EXTERNAL_SERVICE,
        "external-db.yaml": EXTERNAL_DB,
    },
    3: {**SLEEP, "nginx-deploy.yaml": _web("nginx-deploy", 1), **NUMBERS},
    4: LAB06,
}
"""Seed number -> the files its walkthrough writes (path relative to its directory)."""
