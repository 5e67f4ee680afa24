#!/usr/bin/env python3
"""Checks of the Helm chart and the Dockerfile, with real tools and no cluster.

Run by `.ci/test` (after `.ci/install-test-tools`) with the test venv's
Python, which has PyYAML and kubernetes-validate:

    target/test-tools/venv/bin/python helm/tests/check_chart.py

Each check prints `ok` or `FAIL` and why; the last line totals them, and the
exit status is 1 when any failed. The checks:

- `helm lint --strict`, on the defaults and on every `ci/` values file;
- `helm template` of every `ci/` values file (the chart's variants) and of
  every `edge-values/` file (odd but valid values), for Kubernetes 1.30 and
  for the newest version kubernetes-validate has a schema for;
- every rendered manifest through `kubernetes-validate --strict` for both
  versions; every kind must have a schema except ServiceMonitor, whose
  required fields are checked here, against the rendered Service;
- the Deployment: native `grpc:` startup, liveness and readiness probes on
  the container's gRPC port (a number), the health service each checks, the
  drain inside terminationGracePeriodSeconds, the hardened securityContext;
- names and label keys Kubernetes accepts, and no two resources alike;
- the Services (metrics only on its own ClusterIP Service), the update
  strategy, the PodDisruptionBudget (never one that blocks a drain), the
  `helm test` pods (and that a NetworkPolicy lets them in), and NOTES.txt
  (`helm install --dry-run=client`);
- each file in `bad-values/` is rejected with the message on its first line;
- every value in values.yaml has a `## @param`, and the chart README's
  parameter tables are what readme-generator-for-helm makes of them;
- the chart's `config` values name real server settings, with the server's
  defaults, and cover every one of them (`game-session --help`);
- hadolint passes the Dockerfile (and fails a known-bad one, so the linter
  is known to be working), and the build context holds what the build reads;
- the real server, started with each render's environment (on 127.0.0.1),
  answers the rendered probes (`gsctl health`, the same grpc.health.v1
  check the kubelet makes); on SIGTERM, with a player in a session, the
  readiness probe fails while liveness and startup pass, and once the player
  leaves the server exits 0 within the grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "game-session"
BAD_VALUES = Path(__file__).resolve().parent / "bad-values"
EDGE_VALUES = Path(__file__).resolve().parent / "edge-values"
RELEASE = "gs"
NAMESPACE = "games"
OLDEST_KUBE = "1.30.0"
NEWEST_KUBE = latest_version()
# Kinds with no schema in kubernetes-validate; checked by hand below.
NO_SCHEMA = {"ServiceMonitor"}
# Server settings the chart sets from other values, not from `config`.
DERIVED_ENV = {
    "GAME_SESSION_LISTEN": "containerPorts.grpc",
    "GAME_SESSION_BACKEND_LISTEN": "backend.enabled and containerPorts.backend",
    "GAME_SESSION_METRICS_LISTEN": "metrics.enabled and containerPorts.metrics",
    "GAME_SESSION_DRAIN_PERIOD": "drain.periodSeconds",
    "GAME_SESSION_SHUTDOWN_GRACE": "drain.flushSeconds",
}
# `config` defaults that differ from the server's on purpose.
CHOSEN_DEFAULTS = {
    # Pods' logs go to a collector, which wants one JSON object per line.
    "GAME_SESSION_LOG_FORMAT": "json",
}


class CheckFailed(Exception):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML
    keeps the last; the API server and many tools refuse the manifest)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise CheckFailed(f"keys given twice {twice} at line {node.start_mark.line + 1}")
        return super().construct_mapping(node, deep)


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]


def container_port(c: dict, name: str) -> int | None:
    """The number of the container's port called `name`, or None."""
    return next((p["containerPort"] for p in c["ports"] if p["name"] == name), None)


def plain_env(c: dict) -> dict[str, str | None]:
    """The container's env vars by name (None for valueFrom ones)."""
    return {e["name"]: e.get("value") for e in c["env"]}


def seconds(value: str) -> int:
    """A whole-seconds duration as the chart renders it ("20s")."""
    return int(re.fullmatch(r"(\d+)s", value).group(1))


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


class Checks:
    def __init__(self, helm: Path, validate: Path, hadolint: Path, readme_generator: Path, server: Path, gsctl: Path):
        self.helm, self.validate, self.hadolint, self.server, self.gsctl = helm, validate, hadolint, server, gsctl
        self.readme_generator = readme_generator
        self.passed = 0
        self.failed = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="chart-check-"))
        # "ci/x.yaml" or "edge-values/x.yaml" -> the file.
        self.values_files = {f"{f.parent.name}/{f.name}": f
                             for d in (CHART / "ci", EDGE_VALUES) for f in sorted(d.glob("*.yaml"))}
        # The same names -> rendered documents (for Kubernetes 1.30).
        self.renders: dict[str, list[dict]] = {}

    def check(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL {name}\n  " + str(e).replace("\n", "\n  "))
        except Exception:
            self.failed += 1
            print(f"FAIL {name}\n  " + traceback.format_exc().replace("\n", "\n  "))
        else:
            self.passed += 1
            print(f"ok   {name}")

    # --- lint, render, validate ---------------------------------------------

    def lint(self, values: Path | None) -> None:
        cmd = [self.helm, "lint", "--strict", CHART]
        if values:
            cmd += ["-f", values]
        out = run(cmd).stdout
        expect("0 chart(s) failed" in out, out)
        # --strict turns warnings into failures; an INFO is the most allowed.
        bad = [l for l in out.splitlines() if l.startswith("[") and not l.startswith("[INFO]")]
        expect(not bad, "\n".join(bad))

    def render(self, name: str, kube: str) -> Path:
        out = run([self.helm, "template", RELEASE, CHART, "-f", self.values_files[name],
                   "--namespace", NAMESPACE, "--kube-version", kube]).stdout
        path = self.tmp / f"{name.replace('/', '-')}-{kube}.yaml"
        path.write_text(out)
        docs = load_all(out)
        expect(docs, "rendered nothing")
        if kube == OLDEST_KUBE:
            self.renders[name] = docs
        return path

    def render_and_validate(self, name: str, kube: str) -> None:
        path = self.render(name, kube)
        proc = run([self.validate, "--strict", "-k", kube, path], ok=False)
        report = proc.stdout + proc.stderr
        expect(proc.returncode == 0, report)
        # A kind without a schema is only a warning; allow it for
        # ServiceMonitor alone (a typo in apiVersion would slip through).
        for line in report.splitlines():
            if line.startswith("WARN"):
                expect(any(f"kind {k} " in line for k in NO_SCHEMA), f"unexpected warning: {line}")
        # And every resource with a schema was validated, each by name.
        for d in load_all(path.read_text()):
            if d["kind"] not in NO_SCHEMA:
                resource = f"{d['kind'].lower()}/{d['metadata']['name']}"
                expect(f"passed for resource {resource} against version" in report,
                       f"{resource} was not validated:\n{report}")

    # --- the rendered resources ---------------------------------------------

    def all_docs(self):
        for name, docs in self.renders.items():
            for doc in docs:
                yield name, doc

    def of_kind(self, docs: list[dict], kind: str) -> list[dict]:
        return [d for d in docs if d["kind"] == kind]

    def server_deployment(self, docs: list[dict]) -> tuple[dict, dict]:
        deployments = self.of_kind(docs, "Deployment")
        expect(len(deployments) == 1, f"{len(deployments)} Deployments")
        pod = deployments[0]["spec"]["template"]["spec"]
        containers = [c for c in pod["containers"] if c["name"] == "game-session"]
        expect(len(containers) == 1, "no game-session container")
        return pod, containers[0]

    def names_and_labels(self) -> None:
        dns_label = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
        label_name = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
        dns_subdomain = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

        def check_labels(where: str, labels: dict) -> None:
            for key, value in (labels or {}).items():
                prefix, _, key_name = key.rpartition("/")
                expect(len(key_name) <= 63 and label_name.fullmatch(key_name), f"{where}: label key {key!r}")
                expect(not prefix or (len(prefix) <= 253 and dns_subdomain.fullmatch(prefix)), f"{where}: label key {key!r}")
                expect(isinstance(value, str), f"{where}: label {key}={value!r} is not a string")
                expect(value == "" or (len(value) <= 63 and label_name.fullmatch(value)), f"{where}: label {key}={value!r}")

        for name, docs in self.renders.items():
            seen = set()
            for d in docs:
                meta = d["metadata"]
                where = f"{name}: {d['kind']}/{meta['name']}"
                expect((d["kind"], meta["name"]) not in seen, f"{where} rendered twice")
                seen.add((d["kind"], meta["name"]))
                limit = 63 if d["kind"] in ("Service", "Pod") else 253
                expect(len(meta["name"]) <= limit and dns_label.fullmatch(meta["name"]), f"{where}: bad name")
                check_labels(where, meta.get("labels"))
                spec = d.get("spec", {})
                check_labels(where + " pod template", spec.get("template", {}).get("metadata", {}).get("labels"))
                check_labels(where + " selector", spec.get("selector", {}).get("matchLabels", spec.get("selector")))
                for rule in spec.get("ingress", []) + spec.get("egress", []):
                    for peer in rule.get("from", []) + rule.get("to", []):
                        check_labels(where + " peer", peer.get("podSelector", {}).get("matchLabels"))

    def selectors(self) -> None:
        for name, docs in self.renders.items():
            deploy = self.of_kind(docs, "Deployment")[0]
            pod_labels = deploy["spec"]["template"]["metadata"]["labels"]

            def selects(where: str, match: dict) -> None:
                expect(match and match.items() <= pod_labels.items(),
                       f"{name}: {where} selects {match}, not the pods {pod_labels}")

            selects("the Deployment", deploy["spec"]["selector"]["matchLabels"])
            for svc in self.of_kind(docs, "Service"):
                selects(f"Service {svc['metadata']['name']}", svc["spec"]["selector"])
            for pdb in self.of_kind(docs, "PodDisruptionBudget"):
                selects("the PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])
            for np in self.of_kind(docs, "NetworkPolicy"):
                selects("the NetworkPolicy", np["spec"]["podSelector"]["matchLabels"])
            for c in deploy["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
                selects("a topology spread constraint", c["labelSelector"]["matchLabels"])
            for hpa in self.of_kind(docs, "HorizontalPodAutoscaler"):
                target = hpa["spec"]["scaleTargetRef"]
                expect((target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"]),
                       f"{name}: the HPA scales {target}")
            # Every resource in one namespace (a ServiceMonitor may be elsewhere).
            namespaces = {d["metadata"]["namespace"] for d in docs if d["kind"] != "ServiceMonitor"}
            expect(len(namespaces) == 1, f"{name}: resources in namespaces {sorted(namespaces)}")
            want = (yaml.safe_load(self.values_files[name].read_text()) or {}).get("namespaceOverride") or NAMESPACE
            expect(namespaces == {want}, f"{name}: resources in {sorted(namespaces)}, want {want}")

    def old_kubernetes(self) -> None:
        # Before 1.30 there is no preStop sleep, and the grace period has no
        # room for one.
        out = run([self.helm, "template", RELEASE, CHART, "--kube-version", "1.29.0"]).stdout
        deploy = next(d for d in load_all(out) if d["kind"] == "Deployment")
        pod = deploy["spec"]["template"]["spec"]
        expect("lifecycle" not in pod["containers"][0], "a preStop sleep rendered for Kubernetes 1.29")
        values = yaml.safe_load((CHART / "values.yaml").read_text())["drain"]
        want = values["periodSeconds"] + values["flushSeconds"] + values["killMarginSeconds"]
        expect(pod["terminationGracePeriodSeconds"] == want,
               f"grace {pod['terminationGracePeriodSeconds']} for Kubernetes 1.29, want {want}")

    def strategy(self) -> None:
        for name, docs in self.renders.items():
            deploy = self.of_kind(docs, "Deployment")[0]
            strategy = deploy["spec"]["strategy"]
            expect(strategy["type"] in ("RollingUpdate", "Recreate"), f"{name}: strategy {strategy}")
            if strategy["type"] == "Recreate":
                expect("rollingUpdate" not in strategy, f"{name}: Recreate with rollingUpdate, which the API server rejects")

    def probes(self) -> None:
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            expect([p["name"] for p in c["ports"]].count("grpc") == 1, f"{name}: not one containerPort named grpc")
            port = container_port(c, "grpc")
            for probe, service in (("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", None)):
                p = c.get(probe)
                expect(p is not None, f"{name}: no {probe}")
                handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(p)
                expect(handlers == {"grpc"}, f"{name}: {probe} uses {sorted(handlers)}, not a native grpc probe")
                g = p["grpc"]
                expect(type(g["port"]) is int, f"{name}: {probe} port {g['port']!r} is not a number")
                expect(g["port"] == port, f"{name}: {probe} port {g['port']} is not the gRPC port {port}")
                expect(g.get("service") == service,
                       f"{name}: {probe} checks service {g.get('service')!r}, want {service!r}")
            # Readiness must notice a drain quickly, liveness must not.
            expect(c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10,
                   f"{name}: readiness takes over 10 s to notice a drain")

    def drain(self) -> None:
        for name, docs in self.renders.items():
            pod, c = self.server_deployment(docs)
            env = plain_env(c)
            drain = seconds(env["GAME_SESSION_DRAIN_PERIOD"])
            flush = seconds(env["GAME_SESSION_SHUTDOWN_GRACE"])
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            grace = pod["terminationGracePeriodSeconds"]
            expect(grace > sleep + drain + flush,
                   f"{name}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain} + flush {flush}")

    def security(self) -> None:
        for name, docs in self.renders.items():
            pods = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in self.of_kind(docs, "Deployment")]
            pods += [(d["metadata"]["name"], d["spec"]) for d in self.of_kind(docs, "Pod")]
            for pod_name, pod in pods:
                psc = pod.get("securityContext", {})
                expect(psc.get("runAsNonRoot") is True, f"{name}/{pod_name}: pod may run as root")
                for c in pod["containers"]:
                    sc = c.get("securityContext", {})
                    where = f"{name}/{pod_name}/{c['name']}"
                    expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: may run as root")
                    expect(type(sc.get("runAsUser", psc.get("runAsUser"))) is int, f"{where}: no numeric runAsUser")
                    expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem")
                    expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
                    expect(sc.get("privileged") in (None, False), f"{where}: privileged")
                    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not all dropped")
                    expect(not sc.get("capabilities", {}).get("add"), f"{where}: capabilities added")
                    seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
                    expect(seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp {seccomp}")
                    expect("resources" in c, f"{where}: no resources")
                expect(pod.get("automountServiceAccountToken") is False, f"{name}/{pod_name}: API token mounted")

    def services(self) -> None:
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            container_ports = {p["name"] for p in c["ports"]}
            services = {d["metadata"]["name"]: d for d in self.of_kind(docs, "Service")}
            main = next((s for s in services.values() if any(p["name"] == "grpc" for p in s["spec"]["ports"])
                         and s["spec"].get("clusterIP") != "None"), None)
            expect(main is not None, f"{name}: no Service with a grpc port")
            ports = {p["name"]: p for p in main["spec"]["ports"]}
            expect(ports["grpc"].get("appProtocol") == "grpc", f"{name}: Service port grpc without appProtocol grpc")
            # /metrics only on its own ClusterIP Service, never on one that
            # may be a public load balancer.
            with_metrics = [s for s in services.values() if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
            expect(len(with_metrics) == ("metrics" in container_ports),
                   f"{name}: metrics on Services {[s['metadata']['name'] for s in with_metrics]}")
            for svc in with_metrics:
                expect(svc["spec"]["type"] == "ClusterIP" and len(svc["spec"]["ports"]) == 1,
                       f"{name}: metrics on Service {svc['metadata']['name']} of type {svc['spec']['type']} beside other ports")
            for svc in services.values():
                for p in svc["spec"]["ports"]:
                    expect(p["targetPort"] in container_ports,
                           f"{name}: Service {svc['metadata']['name']} targets port {p['targetPort']!r}, not a container port")
            if "backend" in container_ports:
                backend = [s for s in services.values() if s["spec"].get("clusterIP") != "None"
                           and any(p["name"] == "backend" for p in s["spec"]["ports"])]
                expect(len(backend) == 1 and backend[0]["spec"]["type"] == "ClusterIP", f"{name}: no ClusterIP backend Service")
                env = plain_env(c)
                port = container_port(c, "backend")
                host = env["GAME_SESSION_LISTEN"].rsplit(":", 1)[0]
                expect(env.get("GAME_SESSION_BACKEND_LISTEN") == f"{host}:{port}", f"{name}: backend listen {env}")

    def pdb(self) -> None:
        seen_min = False
        for name, docs in self.renders.items():
            hpas = self.of_kind(docs, "HorizontalPodAutoscaler")
            deploy = self.of_kind(docs, "Deployment")[0]
            if hpas:
                expect("replicas" not in deploy["spec"], f"{name}: replicas set beside an HPA")
                fewest = hpas[0]["spec"]["minReplicas"]
            else:
                fewest = deploy["spec"]["replicas"]
            for pdb in self.of_kind(docs, "PodDisruptionBudget"):
                spec = pdb["spec"]
                if "minAvailable" in spec:
                    seen_min = True
                    m = spec["minAvailable"]
                    needed = -(-int(m[:-1]) * fewest // 100) if isinstance(m, str) else m
                    expect(fewest > needed, f"{name}: minAvailable {m} with {fewest} replicas blocks every drain")
                else:
                    expect(spec.get("maxUnavailable") not in (0, "0%"), f"{name}: maxUnavailable 0 blocks every drain")
        expect(seen_min, "no values file renders a minAvailable budget")
        # With one replica, minAvailable: 1 (or 50%) falls back to maxUnavailable.
        for min_available in ("1", '"50%"'):
            path = self.tmp / "one-replica-min-available.yaml"
            path.write_text(f"replicaCount: 1\npdb:\n  minAvailable: {min_available}\n")
            out = run([self.helm, "template", RELEASE, CHART, "-f", path, "--kube-version", OLDEST_KUBE]).stdout
            pdbs = [d for d in load_all(out) if d["kind"] == "PodDisruptionBudget"]
            expect(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdbs[0]["spec"],
                   f"minAvailable {min_available} with one replica rendered {[p['spec'] for p in pdbs]}")

    def helm_tests(self) -> None:
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            tests = [d for d in self.of_kind(docs, "Pod")
                     if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
            expect(tests, f"{name}: no helm test pod")
            services = {d["metadata"]["name"]: d for d in self.of_kind(docs, "Service")}
            for t in tests:
                tc = t["spec"]["containers"][0]
                expect(tc["image"] == c["image"], f"{name}: test image {tc['image']} is not the server's {c['image']}")
                cmd = tc["command"]
                expect(cmd[0] == "/usr/local/bin/gsctl" and cmd[-1] == "health", f"{name}: test runs {cmd}")
                addr = cmd[cmd.index("--addr") + 1]
                m = re.fullmatch(rf"http://([a-z0-9-]+)\.{t['metadata']['namespace']}\.svc:(\d+)", addr)
                expect(m is not None, f"{name}: test address {addr} is not a Service in {t['metadata']['namespace']}")
                svc = services.get(m.group(1))
                expect(svc is not None, f"{name}: test targets {m.group(1)}, not a rendered Service")
                expect(int(m.group(2)) in [p["port"] for p in svc["spec"]["ports"]],
                       f"{name}: test port {m.group(2)} not on Service {m.group(1)}")
                expect(t["spec"]["restartPolicy"] == "Never", f"{name}: test pod restarts")
                # A NetworkPolicy on the server's pods must let the test in.
                target = next(p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == int(m.group(2)))
                port = container_port(c, target)
                labels = t["metadata"]["labels"]
                for np in self.of_kind(docs, "NetworkPolicy"):
                    rules = [r for r in np["spec"].get("ingress", [])
                             if any(p.get("port") == port for p in r.get("ports", []))]
                    admitted = any("from" not in r or any(
                        set(peer) == {"podSelector"} and peer["podSelector"].get("matchLabels", {}).items() <= labels.items()
                        for peer in r["from"]) for r in rules)
                    expect(admitted, f"{name}: NetworkPolicy {np['metadata']['name']} keeps test pod "
                                     f"{t['metadata']['name']} off port {port}")

    def service_monitors(self) -> None:
        seen = 0
        for name, docs in self.renders.items():
            for sm in self.of_kind(docs, "ServiceMonitor"):
                seen += 1
                expect(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{name}: apiVersion {sm['apiVersion']}")
                meta = sm.get("metadata", {})
                expect(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")) is not None,
                       f"{name}: metadata.name {meta.get('name')!r}")
                expect(meta.get("namespace"), f"{name}: no metadata.namespace")
                spec = sm.get("spec", {})
                selector = spec.get("selector", {}).get("matchLabels")
                expect(isinstance(selector, dict) and selector, f"{name}: spec.selector.matchLabels is required")
                endpoints = spec.get("endpoints")
                expect(isinstance(endpoints, list) and endpoints, f"{name}: spec.endpoints is empty")
                namespaces = spec.get("namespaceSelector", {}).get("matchNames", [meta.get("namespace")])
                selected = [s for s in self.of_kind(docs, "Service")
                            if s["metadata"]["namespace"] in namespaces
                            and selector.items() <= s["metadata"]["labels"].items()]
                expect(selected, f"{name}: the selector {selector} matches no Service")
                known = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                         "relabelings", "metricRelabelings", "targetPort", "params"}
                duration = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
                for ep in endpoints:
                    expect(set(ep) <= known, f"{name}: unknown endpoint fields {sorted(set(ep) - known)}")
                    expect(isinstance(ep.get("port"), str), f"{name}: endpoint port must name a Service port")
                    # Prometheus scrapes the named port on every selected
                    # Service that has it: exactly one must, or no target
                    # (or every pod twice).
                    having = [s["metadata"]["name"] for s in selected
                              if ep["port"] in [p["name"] for p in s["spec"]["ports"]]]
                    expect(len(having) == 1, f"{name}: port {ep['port']!r} is on Services {having}, want exactly one")
                    expect(ep.get("path", "/metrics").startswith("/"), f"{name}: path {ep.get('path')}")
                    for field in ("interval", "scrapeTimeout"):
                        if field in ep:
                            expect(duration.match(ep[field]) is not None, f"{name}: {field} {ep[field]!r}")
                    for r in ep.get("relabelings", []) + ep.get("metricRelabelings", []):
                        expect(r.get("action", "replace") in
                               {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                                "lowercase", "uppercase", "keepequal", "dropequal"},
                               f"{name}: relabel action {r.get('action')}")
        expect(seen > 0, "no ci/ values file renders a ServiceMonitor")

    def notes(self) -> None:
        for values, needles in (
            (CHART / "ci" / "default-values.yaml",
             [f"{RELEASE}-game-session.{NAMESPACE}.svc:50051", "grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check",
              f"helm test {RELEASE}", f"GET /metrics on {RELEASE}-game-session-metrics.{NAMESPACE}.svc:9464"]),
            (CHART / "ci" / "backend-values.yaml",
             [f"{RELEASE}-game-session-backend.{NAMESPACE}.svc:50052", "localhost:50052 gamesession.v1.SessionService/CreateSession"]),
            (CHART / "ci" / "autoscaling-values.yaml", [f"{RELEASE}-game-session-headless.{NAMESPACE}.svc"]),
            (EDGE_VALUES / "recreate.yaml", ["a headless Service (headlessService.enabled=true)"]),
        ):
            out = run([self.helm, "install", RELEASE, CHART, "-f", values, "--namespace", NAMESPACE,
                       "--dry-run=client"]).stdout
            notes = out[out.find("NOTES:"):]
            expect("NOTES:" in out, f"{values.name}: no NOTES")
            for needle in needles:
                expect(needle in notes, f"{values.name}: NOTES lack {needle!r}:\n{notes}")

    # --- values -------------------------------------------------------------

    def parameters_readme(self) -> None:
        # readme-generator-for-helm checks that every value has a `## @param`
        # (and no @param names a missing value), then writes the tables.
        readme = self.tmp / "README.md"
        readme.write_text((CHART / "README.md").read_text())
        out = run([self.readme_generator, "--values", CHART / "values.yaml", "--readme", readme])
        expect("Metadata is correct" in out.stdout, out.stdout)
        expect(readme.read_text() == (CHART / "README.md").read_text(),
               "helm/game-session/README.md's parameter tables are stale; regenerate them with\n"
               "target/test-tools/node/node_modules/.bin/readme-generator -v helm/game-session/values.yaml "
               "-r helm/game-session/README.md")

    def bad_values(self, path: Path) -> None:
        first = path.read_text().splitlines()[0]
        m = re.fullmatch(r"# expect: (.+)", first)
        expect(m is not None, f"{path.name}: first line must be `# expect: <message>`")
        proc = run([self.helm, "template", RELEASE, CHART, "-f", path, "--kube-version", OLDEST_KUBE], ok=False)
        expect(proc.returncode != 0, f"{path.name} was accepted")
        expect(m.group(1) in proc.stderr, f"{path.name}: want {m.group(1)!r}, got:\n{proc.stderr}")

    def config_matches_server(self) -> None:
        help_text = run([self.server, "--help"]).stdout
        server = {}
        for block in re.split(r"\n(?=\s+--)", help_text):
            env = re.search(r"\[env: (GAME_SESSION_[A-Z_]+)=", block)
            if env:
                default = re.search(r"\[default: ([^\]]*)\]", block)
                server[env.group(1)] = default.group(1) if default else None
        expect(len(server) >= 20, f"parsed only {len(server)} server settings from --help")
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        chart = {"GAME_SESSION_" + re.sub(r"(?<!^)(?=[A-Z])", "_", k).upper(): v for k, v in values["config"].items()}
        unknown = sorted(set(chart) - set(server))
        expect(not unknown, f"config values the server does not have: {unknown}")
        missing = sorted(set(server) - set(chart) - set(DERIVED_ENV))
        expect(not missing, f"server settings the chart cannot set: {missing}")
        for env, value in chart.items():
            want = CHOSEN_DEFAULTS.get(env, server[env])
            expect(str(value) == want, f"config for {env} defaults to {value!r}, the server to {server[env]!r}")
        # And every GAME_SESSION_* the chart renders is one the server reads.
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            for e in c["env"]:
                if e["name"].startswith("GAME_SESSION_"):
                    expect(e["name"] in server, f"{name}: renders {e['name']}, which the server does not read")

    # --- Dockerfile ---------------------------------------------------------

    def dockerfile(self) -> None:
        run([self.hadolint, "--no-color", ROOT / "Dockerfile"])
        bad = self.tmp / "Dockerfile.bad"
        bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
        expect(run([self.hadolint, "--no-color", bad], ok=False).returncode != 0, "hadolint passed a bad Dockerfile")
        text = (ROOT / "Dockerfile").read_text()
        expect("cargo build --release --locked" in text, "no locked release build")
        users = re.findall(r"^USER (\S+)$", text, re.M)
        expect(users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), f"final USER {users} is not a numeric non-root UID")
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
        ports = {values["containerPorts"]["grpc"], values["containerPorts"]["metrics"]}
        expect(ports <= exposed, f"EXPOSE {sorted(exposed)} lacks the chart's ports {sorted(ports)}")
        uid = values["containerSecurityContext"]["runAsUser"]
        expect(users[-1].split(":")[0] == str(uid), f"image USER {users[-1]} is not the chart's runAsUser {uid}")
        expect(re.search(r"org\.opencontainers\.image\.", text) is not None, "no OCI labels")
        # The build bind-mounts its inputs from the context: each must exist
        # and get past .dockerignore, and the sources read nothing else.
        sources = re.findall(r"--mount=type=bind,source=([^,\s]+)", text)
        expect({"Cargo.toml", "Cargo.lock", "build.rs", "src"} <= set(sources), f"the build mounts {sources}")
        ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                  if l.strip() and not l.startswith("#")]
        expect(ignore[0] == "*", ".dockerignore should start by ignoring everything")
        admitted = {l[1:].rstrip("/") for l in ignore[1:] if l.startswith("!")}
        for source in sources:
            expect((ROOT / source).exists(), f"the build mounts {source}, which does not exist")
            expect(source in admitted, f"the build mounts {source}, which .dockerignore leaves out")
        for path in [ROOT / "build.rs", *(ROOT / "src").rglob("*.rs")]:
            for inc in re.findall(r"include_(?:str|bytes)!\(\s*\"([^\"]+)\"", path.read_text()):
                target = (path.parent / inc).resolve()
                expect(any(target.is_relative_to(ROOT / s) for s in sources),
                       f"{path.relative_to(ROOT)} includes {inc}, outside the build's mounts")

    # --- the real server with the rendered configuration ---------------------

    def boots(self, name: str) -> None:
        pod, c = self.server_deployment(self.renders[name])
        # Container ports -> free local ports; the server binds 127.0.0.1.
        local = {}
        for p in c["ports"]:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                local[p["containerPort"]] = sock.getsockname()[1]
        # The environment the kubelet would give: downward-API and Secret
        # references get stand-ins, and $(VAR) expands to earlier variables.
        stand_ins = {"metadata.namespace": NAMESPACE, "metadata.name": "gs-game-session-0",
                     "metadata.uid": "0d6b2c1e-0000-4000-8000-000000000000", "spec.nodeName": "node-1"}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in c["env"]:
            if "value" in e:
                value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
            elif "fieldRef" in e.get("valueFrom", {}):
                value = stand_ins[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                value = "x-api-key=stand-in"
            if e["name"].endswith("_LISTEN") and value != "off":
                host, port = value.rsplit(":", 1)
                expect(host in ("0.0.0.0", "[::]"), f"{e['name']}={value} does not listen on every address")
                expect(int(port) in local, f"{e['name']}={value} is not a container port")
                value = f"127.0.0.1:{local[int(port)]}"
            env[e["name"]] = value
        # Export goes to a closed local port: the collector is down.
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        log = self.tmp / f"{name.replace('/', '-')}.server.log"
        with open(log, "w") as out:
            server = subprocess.Popen([self.server, *c.get("args", [])], env=env, stdout=out, stderr=subprocess.STDOUT)
        grpc = local[container_port(c, "grpc")]
        # SessionService is on the backend port when there is one.
        api = local[container_port(c, "backend") or container_port(c, "grpc")]
        player = None
        try:
            def health(port: int, service: str | None) -> int:
                return run([self.gsctl, "--addr", f"http://127.0.0.1:{local[port]}", "--timeout", "1s",
                            "health", "--service", service or ""], ok=False).returncode
            probes = {k: c[k]["grpc"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
            # The startup probe's budget: failureThreshold x periodSeconds.
            budget = c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"]
            deadline = time.monotonic() + budget
            while health(probes["startupProbe"]["port"], probes["startupProbe"].get("service")) != 0:
                expect(server.poll() is None, f"the server exited {server.returncode}:\n{log.read_text()}")
                expect(time.monotonic() < deadline, f"the startup probe failed for {budget} s:\n{log.read_text()}")
                time.sleep(0.1)
            for probe, g in probes.items():
                expect(health(g["port"], g.get("service")) == 0, f"{probe} ({g}) fails on a running server")
            if container_port(c, "backend"):
                expect(health(container_port(c, "backend"), None) == 0, "the backend port is not serving")
            # A player holds a session through the drain.
            player = subprocess.Popen([self.gsctl, "--addr", f"http://127.0.0.1:{grpc}", "play", "--mode", "relay",
                                       "--player-id", "drain-check"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while True:
                listed = run([self.gsctl, "--addr", f"http://127.0.0.1:{api}", "--json", "list"], ok=False).stdout
                if '"playerCount":1' in listed:
                    break
                expect(time.monotonic() < deadline, f"the player never joined: {listed}")
                time.sleep(0.1)
            server.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            # Draining: readiness fails at once, liveness and startup go on
            # passing, so the pod leaves the Services and is not restarted.
            while health(probes["readinessProbe"]["port"], probes["readinessProbe"].get("service")) == 0:
                expect(time.monotonic() - stopping < 5, "readiness still passes 5 s into the drain")
                time.sleep(0.05)
            for probe in ("livenessProbe", "startupProbe"):
                g = probes[probe]
                expect(health(g["port"], g.get("service")) == 0, f"{probe} fails while draining: the pod would restart")
            # The session goes on through the drain.
            expect(server.poll() is None, "the server exited with a session still running")
            expect(player.poll() is None, "the player's stream ended at SIGTERM, not after the drain")
            listed = run([self.gsctl, "--addr", f"http://127.0.0.1:{api}", "--json", "list"], ok=False).stdout
            expect('"playerCount":1' in listed, f"the session did not survive SIGTERM: {listed}")
            # The last player leaves; the server exits 0 within what it
            # promises, drain period + shutdown grace (SIGTERM comes after the
            # preStop sleep, and the kill margin is the kubelet's).
            player.stdin.close()
            promise = seconds(env["GAME_SESSION_DRAIN_PERIOD"]) + seconds(env["GAME_SESSION_SHUTDOWN_GRACE"])
            try:
                code = server.wait(timeout=max(0.0, promise + 1 - (time.monotonic() - stopping)))
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"still running {promise} s after SIGTERM")
            expect(code == 0, f"exited {code} after SIGTERM:\n{log.read_text()}")
            if env.get("GAME_SESSION_LOG_FORMAT") == "json":
                lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
                expect(lines, "no log lines")
        finally:
            for process in (server, player):
                if process and process.poll() is None:
                    process.kill()
                    process.wait()

    def all(self) -> None:
        self.check("helm lint --strict (defaults)", self.lint, None)
        for name, f in self.values_files.items():
            self.check(f"helm lint --strict -f {name}", self.lint, f)
        for name in self.values_files:
            for kube in (OLDEST_KUBE, NEWEST_KUBE):
                self.check(f"helm template -f {name} | kubernetes-validate --strict -k {kube}",
                           self.render_and_validate, name, kube)
        if len(self.renders) != len(self.values_files):
            self.failed += 1
            print("FAIL not every values file rendered; the checks below see only some")
        self.check("names and label keys are valid, resources unique", self.names_and_labels)
        self.check("selectors select the pods; one namespace", self.selectors)
        self.check("Kubernetes 1.29: no preStop sleep", self.old_kubernetes)
        self.check("update strategy", self.strategy)
        self.check("probes are native gRPC on the gRPC port", self.probes)
        self.check("drain fits in terminationGracePeriodSeconds", self.drain)
        self.check("hardened securityContext", self.security)
        self.check("Services", self.services)
        self.check("PodDisruptionBudget never blocks a drain", self.pdb)
        self.check("helm test pods", self.helm_tests)
        self.check("ServiceMonitor required fields", self.service_monitors)
        self.check("NOTES.txt", self.notes)
        self.check("every value has a ## @param; the chart README's tables are current", self.parameters_readme)
        for f in sorted(BAD_VALUES.glob("*.yaml")):
            self.check(f"schema rejects bad-values/{f.name}", self.bad_values, f)
        self.check("config values match the server's settings", self.config_matches_server)
        self.check("hadolint Dockerfile", self.dockerfile)
        for name in sorted(self.renders):
            self.check(f"server runs with {name}'s env, passes its probes, exits 0 on SIGTERM", self.boots, name)


def main() -> int:
    tools = ROOT / "target" / "test-tools"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", type=Path, default=tools / "helm")
    parser.add_argument("--kubernetes-validate", type=Path, default=tools / "venv" / "bin" / "kubernetes-validate")
    parser.add_argument("--hadolint", type=Path, default=tools / "venv" / "bin" / "hadolint")
    parser.add_argument("--readme-generator", type=Path,
                        default=tools / "node" / "node_modules" / ".bin" / "readme-generator")
    parser.add_argument("--server", type=Path, default=ROOT / "target" / "debug" / "game-session",
                        help="the game-session binary: its --help lists the settings, and it is run")
    parser.add_argument("--gsctl", type=Path, default=ROOT / "target" / "debug" / "gsctl",
                        help="the gsctl binary, for health checks")
    args = parser.parse_args()
    checks = Checks(args.helm, args.kubernetes_validate, args.hadolint, args.readme_generator, args.server, args.gsctl)
    checks.all()
    print(f"chart checks: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
