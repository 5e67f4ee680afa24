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
- the defaults: auth on, SessionService on its own backend port, TLS off;
- the Deployment: native `grpc:` startup, liveness and readiness probes on
  the container's plain-text health port (a number), the health service
  each checks, the drain inside terminationGracePeriodSeconds, the hardened
  securityContext;
- the files the server reads (the resume key, HS256 secret, admin API keys,
  public keys, JWKS, certificates, and the OTLP collector's CA and client
  certificate named by OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE
  and _CLIENT_KEY): each env var's path is on a read-only mount of the Secret or
  ConfigMap key the values name, nothing more is mounted, the TLS files only
  with tls.enabled and the collector's only with an https:// otel.endpoint;
  the Secrets the chart generates (the auth one only without
  auth.existingSecret, the resume one only without resume.existingSecret)
  hold random keys of the right length, are kept on uninstall, and an
  upgrade reuses their data (`lookup`, rendered against a stand-in
  Kubernetes API server that holds them);
- the resume key: every render, with auth on or off, mounts one Secret's key
  as GAME_SESSION_RESUME_KEY_FILE, so that every replica signs and verifies
  resume tokens with the same key (the generated <fullname>-resume, or
  resume.existingSecret, and then no resume Secret is generated);
- names and label keys Kubernetes accepts, and no two resources alike;
- the Services (metrics and health each only on their own ClusterIP
  Service), the update strategy, the PodDisruptionBudget (never one that
  blocks a drain), the `helm test` pods (one on the health port; none on a
  TLS port; a NetworkPolicy lets them in), and NOTES.txt
  (`helm install --dry-run=client`);
- each file in `bad-values/` is rejected with the message on its first line;
- every value in values.yaml has a `## @param`, and the chart README's
  parameter tables are what readme-generator-for-helm makes of them;
- the chart's `config` values name real server settings, with the server's
  defaults, and with the settings the chart derives from other values
  (listen addresses, drain, auth.*, tls.*) cover every one of them
  (`game-session --help`);
- hadolint passes the Dockerfile (and fails a known-bad one, so the linter
  is known to be working), its listen addresses and ports are the chart's,
  and the build context holds what the build reads;
- the real server, started with each render's environment (on 127.0.0.1) and
  its mounted files (stand-ins made with the openssl CLI for Secrets the
  render names but does not make; the JWKS URL served over HTTPS locally),
  answers the rendered probes on the health port (`gsctl health`, the same
  grpc.health.v1 check the kubelet makes) and the `helm test` pods' checks,
  with the render's resume key (no warning of a random one);
  with auth on it refuses calls without a token and accepts an admin token
  signed by each configured key source (and the admin API key); with TLS on
  it speaks only TLS on the gRPC ports, and mutual TLS on the backend port
  when a client CA is set; with an https:// OTLP endpoint, spans go to a
  stand-in collector that hangs up after the TLS handshake (an http:// one
  goes to a closed port), and the handshake completes only when the render
  has a CA file, with the render's client certificate if it has one; on
  SIGTERM, with a player (holding a token minted with `gsctl token` from the
  render's secret) in a session, the readiness probe fails while liveness
  and startup pass, and once the player leaves the server exits 0 within the
  grace period.
"""

from __future__ import annotations

import argparse
import base64
import copy
import http.server
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
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
# Server settings the chart sets from other values, not from `config`. Each
# must be rendered by some values file (so none is listed for nothing).
DERIVED_ENV = {
    # Always set: with auth off the server alone would bind 127.0.0.1.
    "GAME_SESSION_LISTEN": "listenHost and containerPorts.grpc",
    "GAME_SESSION_BACKEND_LISTEN": "backend.enabled and containerPorts.backend",
    "GAME_SESSION_HEALTH_LISTEN": "listenHost and containerPorts.health",
    "GAME_SESSION_METRICS_LISTEN": "metrics.enabled and containerPorts.metrics",
    "GAME_SESSION_DRAIN_PERIOD": "drain.periodSeconds",
    "GAME_SESSION_SHUTDOWN_GRACE": "drain.flushSeconds",
    # Always set, auth on or off: every replica must sign resume tokens with
    # one key, which a random key per process (the server's default) is not.
    "GAME_SESSION_RESUME_KEY_FILE": "resume.secretKey, in resume.existingSecret or the generated Secret",
    "GAME_SESSION_JWT_HS256_SECRET_FILE": "auth.secretKeys.hs256Secret, in auth.existingSecret or the generated Secret",
    "GAME_SESSION_ADMIN_API_KEY_FILE": "auth.secretKeys.adminApiKeys, in the same Secret",
    "GAME_SESSION_JWT_PUBLIC_KEY_FILES": "auth.publicKeys.existingSecret and auth.publicKeys.keys",
    "GAME_SESSION_JWKS_URL": "auth.jwks.url",
    "GAME_SESSION_JWKS_CA_FILE": "auth.jwks.caSecret",
    "GAME_SESSION_JWKS_FILE": "auth.jwks.file (a Secret or a ConfigMap)",
    "GAME_SESSION_JWKS_REFRESH_INTERVAL": "auth.jwks.refreshInterval",
    "GAME_SESSION_JWKS_REFETCH_MIN_INTERVAL": "auth.jwks.refetchMinInterval",
    "GAME_SESSION_JWT_ISSUER": "auth.issuer",
    "GAME_SESSION_JWT_AUDIENCE": "auth.audience",
    "GAME_SESSION_JWT_LEEWAY": "auth.leeway",
    "GAME_SESSION_ADMIN_CLAIM": "auth.adminClaim",
    "GAME_SESSION_ADMIN_CLAIM_VALUE": "auth.adminClaimValue",
    "GAME_SESSION_TLS_CERT_FILE": "tls.existingSecret (tls.crt)",
    "GAME_SESSION_TLS_KEY_FILE": "tls.existingSecret (tls.key)",
    "GAME_SESSION_TLS_CLIENT_CA_FILE": "tls.clientCA.existingSecret (ca.crt)",
    "GAME_SESSION_TLS_RELOAD_INTERVAL": "tls.reloadInterval",
}
# Derived settings with a server default: the chart's defaults give the same.
DERIVED_DEFAULTS = {
    "GAME_SESSION_HEALTH_LISTEN": lambda v: f"{v['listenHost']}:{v['containerPorts']['health']}",
    "GAME_SESSION_METRICS_LISTEN": lambda v: f"{v['listenHost']}:{v['containerPorts']['metrics']}",
    "GAME_SESSION_DRAIN_PERIOD": lambda v: f"{v['drain']['periodSeconds']}s",
    "GAME_SESSION_SHUTDOWN_GRACE": lambda v: f"{v['drain']['flushSeconds']}s",
    "GAME_SESSION_JWKS_REFRESH_INTERVAL": lambda v: v["auth"]["jwks"]["refreshInterval"],
    "GAME_SESSION_JWKS_REFETCH_MIN_INTERVAL": lambda v: v["auth"]["jwks"]["refetchMinInterval"],
    "GAME_SESSION_JWT_LEEWAY": lambda v: v["auth"]["leeway"],
    "GAME_SESSION_ADMIN_CLAIM": lambda v: v["auth"]["adminClaim"],
    "GAME_SESSION_ADMIN_CLAIM_VALUE": lambda v: v["auth"]["adminClaimValue"],
    "GAME_SESSION_TLS_RELOAD_INTERVAL": lambda v: v["tls"]["reloadInterval"],
}
# The collector's TLS files (read by the server for an https:// endpoint
# only), named by the standard OTEL_* variables rather than GAME_SESSION_*.
# Each must be rendered by some values file.
OTEL_FILE_ENV = {
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "otel.tls.caSecret",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "otel.tls.clientSecret (tls.crt)",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": "otel.tls.clientSecret (tls.key)",
}
# An env var that names files the server reads (comma-separated for _FILES).
FILE_ENV = re.compile(r"GAME_SESSION_\w+_FILES?|" + "|".join(OTEL_FILE_ENV))
# Server settings the chart never sets, and why.
NOT_SET = {
    # The server refuses the secret given twice; the chart mounts it as a file.
    "GAME_SESSION_JWT_HS256_SECRET": "GAME_SESSION_JWT_HS256_SECRET_FILE carries the secret, from a mounted Secret",
    # Likewise (the server refuses both), and a value would differ per render.
    "GAME_SESSION_RESUME_KEY": "GAME_SESSION_RESUME_KEY_FILE carries the key, from a mounted Secret shared by every replica",
}
# Settings whose presence turns auth on.
KEY_SOURCES = ("GAME_SESSION_JWT_HS256_SECRET_FILE", "GAME_SESSION_JWT_PUBLIC_KEY_FILES",
               "GAME_SESSION_JWKS_FILE", "GAME_SESSION_JWKS_URL")
# The generated Secrets' keys, by the value that names each: how long, and
# the server's least.
GENERATED_KEY_LENGTHS = {"auth.secretKeys.hs256Secret": (64, 32), "auth.secretKeys.adminApiKeys": (48, 16),
                         "resume.secretKey": (64, 32)}
# What the server logs when it has no resume key and makes a random one of
# its own (the chart always gives it one).
RANDOM_RESUME_KEY_WARNING = "no --resume-key-file"
# Where the chart mounts the resume key.
RESUME_KEY_FILE = "/etc/game-session/resume/resume-key"
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


def merged(base: dict, override: dict) -> dict:
    """Values as Helm merges a values file over the chart's: maps merge,
    anything else replaces, and null deletes."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_signature_to_raw(der: bytes, size: int) -> bytes:
    """An ECDSA signature as openssl writes it (DER: SEQUENCE of r and s) to
    the r || s a JWS carries."""
    expect(der[0] == 0x30, "not a DER ECDSA signature")
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    raw = b""
    for _ in range(2):
        expect(der[i] == 0x02, "not a DER ECDSA signature")
        n = der[i + 1]
        raw += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return raw


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True)
    if proc.returncode != 0:
        raise CheckFailed(f"openssl {' '.join(map(str, args))}: {proc.stderr.decode()}")
    return proc.stdout


class Fixtures:
    """Stand-ins for the Secrets and ConfigMaps a render names but does not
    make, written once with the openssl CLI: a test CA; a server certificate
    for 127.0.0.1 and a client certificate, both signed by it; an RSA and an
    EC P-256 key pair for the PEM public keys; an RSA key pair in a JWKS."""

    JWKS_KID = "chart-check"

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        self.ca_key, self.ca_crt = self.dir / "ca.key", self.dir / "ca.crt"
        openssl("req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "2",
                "-subj", "/CN=chart-check test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.server_key, self.server_crt = self.leaf("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.client_key, self.client_crt = self.leaf("client", "clientAuth", None)
        self.rsa_key, self.rsa_pub = self.key_pair("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        self.ec_key, self.ec_pub = self.key_pair("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
        self.jwks_key, _ = self.key_pair("jwks", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        modulus = openssl("rsa", "-in", self.jwks_key, "-noout", "-modulus").decode().strip().split("=", 1)[1]
        expect(b"65537" in openssl("rsa", "-in", self.jwks_key, "-noout", "-text"), "the JWKS key's exponent is not 65537")
        self.jwks = json.dumps({"keys": [{"kty": "RSA", "kid": self.JWKS_KID, "use": "sig", "alg": "RS256",
                                          "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"}]}).encode()
        # Public key PEM -> its private key, to sign tokens it verifies.
        self.private_of = {self.rsa_pub.read_bytes(): ("RS256", self.rsa_key),
                           self.ec_pub.read_bytes(): ("ES256", self.ec_key)}

    def leaf(self, name: str, usage: str, san: str | None) -> tuple[Path, Path]:
        key, crt = self.dir / f"{name}.key", self.dir / f"{name}.crt"
        ext = ["-addext", "basicConstraints=critical,CA:FALSE", "-addext", f"extendedKeyUsage={usage}"]
        if san:
            ext += ["-addext", san]
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN=chart-check {name}",
                "-CA", self.ca_crt, "-CAkey", self.ca_key, *ext)
        return key, crt

    def key_pair(self, name: str, algorithm: list[str]) -> tuple[Path, Path]:
        key, pub = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        openssl("genpkey", *algorithm, "-out", key)
        openssl("pkey", "-in", key, "-pubout", "-out", pub)
        return key, pub

    def content(self, env: str, key: str) -> bytes:
        """A stand-in for the Secret or ConfigMap key that env var's file
        comes from. Public keys: an `es*` key gets the EC key, others RSA."""
        if env == "GAME_SESSION_JWT_HS256_SECRET_FILE":
            return f"fixture-hs256-{secrets.token_hex(24)}\n".encode()
        if env == "GAME_SESSION_RESUME_KEY_FILE":
            return f"fixture-resume-{secrets.token_hex(24)}\n".encode()
        if env == "GAME_SESSION_ADMIN_API_KEY_FILE":
            return f"fixture-admin-{secrets.token_hex(12)}\n\nfixture-admin-{secrets.token_hex(12)}\n".encode()
        if env == "GAME_SESSION_JWT_PUBLIC_KEY_FILES":
            return (self.ec_pub if key.startswith("es") else self.rsa_pub).read_bytes()
        if env == "GAME_SESSION_JWKS_FILE":
            return self.jwks
        if env in ("GAME_SESSION_JWKS_CA_FILE", "GAME_SESSION_TLS_CLIENT_CA_FILE", "OTEL_EXPORTER_OTLP_CERTIFICATE"):
            return self.ca_crt.read_bytes()
        if env == "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE":
            return self.client_crt.read_bytes()
        if env == "OTEL_EXPORTER_OTLP_CLIENT_KEY":
            return self.client_key.read_bytes()
        if env == "GAME_SESSION_TLS_CERT_FILE":
            return self.server_crt.read_bytes()
        if env == "GAME_SESSION_TLS_KEY_FILE":
            return self.server_key.read_bytes()
        raise CheckFailed(f"no stand-in for {env}")

    def jwt(self, alg: str, key: Path, claims: dict, kid: str | None = None) -> str:
        """A token signed with openssl: RS256 (PKCS#1 v1.5) or ES256."""
        header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = openssl("dgst", "-sha256", "-sign", key, data=signing_input.encode())
        if alg == "ES256":
            signature = der_signature_to_raw(signature, 32)
        return f"{signing_input}.{b64url(signature)}"


class Served:
    """An HTTP(S) server on 127.0.0.1 in a thread, answering GETs with
    `answer(path) -> (status, content type, body)`; a context manager."""

    def __init__(self, answer, tls: tuple[Path, Path] | None = None):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, kind, body = answer(self.path.split("?")[0])
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class StandInCollector:
    """In place of an https:// OTLP collector, a TLS listener on 127.0.0.1
    that completes the handshake (the test CA's certificate for 127.0.0.1;
    a client certificate asked for and, if sent, verified against the test
    CA), notes what the client presented, and hangs up before a byte of OTLP:
    no export ever succeeds. A context manager."""

    def __init__(self, fixtures: Fixtures):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(fixtures.server_crt, fixtures.server_key)
        self.context.load_verify_locations(fixtures.ca_crt)
        self.context.verify_mode = ssl.CERT_OPTIONAL
        # tonic offers h2 only, hyper-rustls http/1.1.
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        # One entry per completed handshake: the client certificate's CN, or None.
        self.handshakes: list[str | None] = []
        self.failures: list[str] = []

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.handshake, args=(conn,), daemon=True).start()

    def handshake(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                subject = dict(field for rdn in (tls.getpeercert() or {}).get("subject", ()) for field in rdn)
                with self.lock:
                    self.handshakes.append(subject.get("commonName"))
        except (OSError, ssl.SSLError) as e:
            with self.lock:
                self.failures.append(str(e))
        finally:
            conn.close()

    def __enter__(self):
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


class StandInApiServer(Served):
    """Just enough of a Kubernetes API server for `helm template
    --dry-run=server`: discovery of the kinds the chart renders, and GET of
    the objects in `objects` ({(resource, namespace, name): object}); every
    other object is NotFound. Lets a render run the chart's `lookup`."""

    KINDS = {
        "v1": [("secrets", "Secret"), ("services", "Service"), ("serviceaccounts", "ServiceAccount"),
               ("pods", "Pod"), ("configmaps", "ConfigMap")],
        "apps/v1": [("deployments", "Deployment")],
        "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
        "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
        "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
        "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor")],
    }

    def __init__(self, objects: dict[tuple[str, str, str], dict]):
        def resources(gv: str) -> dict:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": r, "singularName": k.lower(), "namespaced": True, "kind": k, "verbs": ["get", "list"]}
                for r, k in self.KINDS[gv]]}

        def answer(path: str) -> tuple[int, str, bytes]:
            groups = sorted({gv.split("/")[0] for gv in self.KINDS if "/" in gv})
            found = re.fullmatch(r"/apis?/(?:([^/]+)/)?v\d\w*/namespaces/([^/]+)/([^/]+)/([^/]+)", path)
            body = {
                "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "platform": "linux/amd64"},
                "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
                "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": g, "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}
                                             for gv in self.KINDS if gv.startswith(g + "/")],
                     "preferredVersion": {"groupVersion": next(gv for gv in self.KINDS if gv.startswith(g + "/")),
                                          "version": next(gv for gv in self.KINDS if gv.startswith(g + "/")).split("/")[1]}}
                    for g in groups]},
            }.get(path)
            if body is None and path == "/api/v1":
                body = resources("v1")
            elif body is None and path.startswith("/apis/") and path[len("/apis/"):] in self.KINDS:
                body = resources(path[len("/apis/"):])
            elif body is None and found:
                body = objects.get((found.group(3), found.group(2), found.group(4)))
            if body is None:
                return 404, "application/json", json.dumps(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).encode()
            return 200, "application/json", json.dumps(body).encode()

        super().__init__(answer)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
            "users": [{"name": "stand-in", "user": {"token": "stand-in"}}]}))
        return path


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
        self.defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        self._fixtures: Fixtures | None = None

    @property
    def fixtures(self) -> Fixtures:
        if self._fixtures is None:
            self._fixtures = Fixtures(self.tmp / "fixtures")
        return self._fixtures

    def values(self, name: str) -> dict:
        """The values a render used: the chart's, merged with its file's."""
        return merged(self.defaults, yaml.safe_load(self.values_files[name].read_text()) or {})

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
            for port_name in ("grpc", "health"):
                expect([p["name"] for p in c["ports"]].count(port_name) == 1, f"{name}: not one containerPort named {port_name}")
            port = container_port(c, "health")
            expect(port != container_port(c, "grpc"), f"{name}: the health port is the gRPC port")
            env = plain_env(c)
            expect(env.get("GAME_SESSION_HEALTH_LISTEN", "").endswith(f":{port}"),
                   f"{name}: GAME_SESSION_HEALTH_LISTEN={env.get('GAME_SESSION_HEALTH_LISTEN')} is not the health port {port}")
            for probe, service in (("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", None)):
                p = c.get(probe)
                expect(p is not None, f"{name}: no {probe}")
                handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(p)
                expect(handlers == {"grpc"}, f"{name}: {probe} uses {sorted(handlers)}, not a native grpc probe")
                g = p["grpc"]
                expect(type(g["port"]) is int, f"{name}: {probe} port {g['port']!r} is not a number")
                expect(g["port"] == port, f"{name}: {probe} port {g['port']} is not the health port {port}")
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
            # The open, plain-text health port likewise: on one ClusterIP
            # Service of its own (for helm test), never on the player Service.
            with_health = [s for s in services.values() if any(p["targetPort"] == "health" for p in s["spec"]["ports"])]
            expect(len(with_health) == 1 and with_health[0]["spec"]["type"] == "ClusterIP"
                   and len(with_health[0]["spec"]["ports"]) == 1 and with_health[0]["spec"].get("clusterIP") != "None",
                   f"{name}: the health port is on Services {[s['metadata']['name'] for s in with_health]}")
            expect(("backend" in container_ports) == self.values(name)["backend"]["enabled"],
                   f"{name}: backend port rendered is not backend.enabled")
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

    def chart_defaults(self) -> None:
        # What the chart gives with no values at all: auth on (from a
        # generated Secret), a generated resume key, SessionService on its
        # own port and ClusterIP Service, TLS off, and the listen addresses
        # explicit.
        v = self.defaults
        expect(v["auth"]["enabled"] is True and not v["auth"]["existingSecret"], "auth is not on by default")
        expect(not v["resume"]["existingSecret"], "the resume key is not generated by default")
        expect(v["backend"]["enabled"] is True, "backend.enabled is not on by default")
        expect(v["tls"]["enabled"] is False, "TLS is on by default")
        docs = self.renders["ci/default-values.yaml"]
        _, c = self.server_deployment(docs)
        env = plain_env(c)
        for var in ("GAME_SESSION_LISTEN", "GAME_SESSION_BACKEND_LISTEN", "GAME_SESSION_HEALTH_LISTEN",
                    "GAME_SESSION_JWT_HS256_SECRET_FILE", "GAME_SESSION_ADMIN_API_KEY_FILE",
                    "GAME_SESSION_RESUME_KEY_FILE"):
            expect(env.get(var), f"the default render lacks {var}")
        expect(not any(k.startswith("GAME_SESSION_TLS_") for k in env), "the default render sets TLS")
        backend = [s for s in self.of_kind(docs, "Service") if s["spec"].get("clusterIP") != "None"
                   and [p["name"] for p in s["spec"]["ports"]] == ["backend"]]
        expect(len(backend) == 1 and backend[0]["spec"]["type"] == "ClusterIP", "no backend ClusterIP Service by default")
        expect(set(self.generated_secrets("ci/default-values.yaml", docs)) == {"auth", "resume"},
               "no generated auth and resume Secrets by default")
        # Auth off still passes the listen address: alone, the server would
        # bind 127.0.0.1.
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            env = plain_env(c)
            expect(env.get("GAME_SESSION_LISTEN", "").rsplit(":", 1)[0] in ("0.0.0.0", "[::]"),
                   f"{name}: GAME_SESSION_LISTEN={env.get('GAME_SESSION_LISTEN')}")
            expect(any(k in env for k in KEY_SOURCES) == self.values(name)["auth"]["enabled"],
                   f"{name}: auth.enabled={self.values(name)['auth']['enabled']} but key sources {sorted(set(KEY_SOURCES) & set(env))}")

    @staticmethod
    def mounted(pod: dict, c: dict, path: str) -> tuple[str, str, str, str]:
        """Where a container's file comes from: (kind, name, key, mountPath)
        of the Secret or ConfigMap key mounted at `path`."""
        for m in c.get("volumeMounts", []):
            prefix = m["mountPath"].rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            expect(m.get("readOnly") is True, f"{m['name']} is mounted writable")
            # A subPath mount is never updated in place: no reload.
            expect("subPath" not in m and "subPathExpr" not in m, f"{m['name']} is mounted with a subPath")
            relative = path[len(prefix):]
            volume = next((v for v in pod.get("volumes", []) if v["name"] == m["name"]), None)
            expect(volume is not None, f"no volume {m['name']}")
            for kind, field, name_field in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
                if field in volume:
                    source = volume[field]
                    items = source.get("items")
                    key = next((i["key"] for i in items if i["path"] == relative), None) if items else relative
                    expect(key is not None, f"{path}: no item of volume {m['name']} at {relative}")
                    return kind, source[name_field], key, m["mountPath"]
            raise CheckFailed(f"volume {m['name']} is neither a Secret nor a ConfigMap")
        raise CheckFailed(f"{path} is on no volume mount")

    def expected_files(self, name: str, docs: list[dict]) -> dict[str, list[tuple[str, str, str]]]:
        """The files the values ask for: env var -> the (kind, name, key) of
        each file it names."""
        v = self.values(name)
        out: dict[str, list[tuple[str, str, str]]] = {}
        generated = {what: s["metadata"]["name"] for what, s in self.generated_secrets(name, docs).items()}
        # The resume key, auth on or off.
        resume = v["resume"]
        out["GAME_SESSION_RESUME_KEY_FILE"] = [("Secret", resume["existingSecret"] or generated.get("resume", "<none generated>"),
                                                resume["secretKey"])]
        auth = v["auth"]
        if auth["enabled"]:
            secret = auth["existingSecret"] or generated.get("auth", "<none generated>")
            if auth["secretKeys"]["hs256Secret"]:
                out["GAME_SESSION_JWT_HS256_SECRET_FILE"] = [("Secret", secret, auth["secretKeys"]["hs256Secret"])]
            if auth["secretKeys"]["adminApiKeys"]:
                out["GAME_SESSION_ADMIN_API_KEY_FILE"] = [("Secret", secret, auth["secretKeys"]["adminApiKeys"])]
            if auth["publicKeys"]["existingSecret"]:
                out["GAME_SESSION_JWT_PUBLIC_KEY_FILES"] = [("Secret", auth["publicKeys"]["existingSecret"], k)
                                                            for k in auth["publicKeys"]["keys"]]
            jwks = auth["jwks"]["file"]
            if jwks["existingSecret"]:
                out["GAME_SESSION_JWKS_FILE"] = [("Secret", jwks["existingSecret"], jwks["key"])]
            if jwks["existingConfigMap"]:
                out["GAME_SESSION_JWKS_FILE"] = [("ConfigMap", jwks["existingConfigMap"], jwks["key"])]
            if auth["jwks"]["caSecret"]["name"]:
                out["GAME_SESSION_JWKS_CA_FILE"] = [("Secret", auth["jwks"]["caSecret"]["name"], auth["jwks"]["caSecret"]["key"])]
        tls = v["tls"]
        if tls["enabled"]:
            out["GAME_SESSION_TLS_CERT_FILE"] = [("Secret", tls["existingSecret"], "tls.crt")]
            out["GAME_SESSION_TLS_KEY_FILE"] = [("Secret", tls["existingSecret"], "tls.key")]
            if tls["clientCA"]["existingSecret"]:
                out["GAME_SESSION_TLS_CLIENT_CA_FILE"] = [("Secret", tls["clientCA"]["existingSecret"], "ca.crt")]
        otel = v["otel"]
        if otel["endpoint"].startswith("https://"):
            if otel["tls"]["caSecret"]["name"]:
                out["OTEL_EXPORTER_OTLP_CERTIFICATE"] = [("Secret", otel["tls"]["caSecret"]["name"], otel["tls"]["caSecret"]["key"])]
            if otel["tls"]["clientSecret"]["name"]:
                out["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = [("Secret", otel["tls"]["clientSecret"]["name"], "tls.crt")]
                out["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = [("Secret", otel["tls"]["clientSecret"]["name"], "tls.key")]
        return out

    def files(self) -> None:
        seen = set()
        for name, docs in self.renders.items():
            pod, c = self.server_deployment(docs)
            env = plain_env(c)
            expect(not set(NOT_SET) & set(env), f"{name}: renders {sorted(set(NOT_SET) & set(env))}")
            rendered = {k: v for k, v in env.items() if FILE_ENV.fullmatch(k)}
            want = self.expected_files(name, docs)
            expect(set(rendered) == set(want), f"{name}: file settings {sorted(rendered)}, want {sorted(want)}")
            # The server reads the collector's files for an https:// endpoint
            # only: elsewhere they would be mounted for nothing.
            otel_files = sorted(set(rendered) & set(OTEL_FILE_ENV))
            expect(not otel_files or (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").startswith("https://"),
                   f"{name}: {otel_files} without an https:// OTEL_EXPORTER_OTLP_ENDPOINT")
            used = set()
            for var, paths in rendered.items():
                found = []
                for path in paths.split(","):
                    try:
                        kind, source, key, mount = self.mounted(pod, c, path)
                    except CheckFailed as e:
                        raise CheckFailed(f"{name}: {var}: {e}")
                    found.append((kind, source, key))
                    used.add(next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == mount))
                expect(found == want[var], f"{name}: {var} reads {found}, want {want[var]}")
                seen.add(var)
            # Nothing mounted that the server does not read.
            volumes = {v["name"] for v in pod.get("volumes", [])}
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            expect(volumes == mounts == used, f"{name}: volumes {sorted(volumes)}, mounts {sorted(mounts)}, read {sorted(used)}")
        # Every kind of file is rendered by some values file.
        every = {v for v in DERIVED_ENV if v.endswith(("_FILE", "_FILES"))} | set(OTEL_FILE_ENV)
        expect(seen == every, f"no values file renders {sorted(every - seen)}")

    def generated_secrets(self, name: str, docs: list[dict]) -> dict[str, dict]:
        """The Secrets a render generates, by what they hold: "auth" or
        "resume", the suffix the chart gives their names."""
        out: dict[str, dict] = {}
        for s in self.of_kind(docs, "Secret"):
            what = s["metadata"]["name"].rsplit("-", 1)[-1]
            expect(what in ("auth", "resume") and what not in out, f"{name}: Secret {s['metadata']['name']} rendered")
            out[what] = s
        return out

    @staticmethod
    def wanted_secrets(v: dict) -> dict[str, dict[str, str]]:
        """The Secrets the values have the chart generate, each as {the value
        that names a key (as in GENERATED_KEY_LENGTHS): the key}."""
        out = {}
        auth = v["auth"]
        keys = {f"auth.secretKeys.{field}": key for field, key in auth["secretKeys"].items() if key}
        if auth["enabled"] and not auth["existingSecret"] and keys:
            out["auth"] = keys
        # Needed with auth on or off.
        if not v["resume"]["existingSecret"]:
            out["resume"] = {"resume.secretKey": v["resume"]["secretKey"]}
        return out

    def generated_secret(self) -> None:
        for name, docs in self.renders.items():
            wanted = self.wanted_secrets(self.values(name))
            generated = self.generated_secrets(name, docs)
            expect(set(generated) == set(wanted), f"{name}: generated Secrets {sorted(generated)}, want {sorted(wanted)}")
            for what, s in generated.items():
                keys = wanted[what]
                expect(s["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
                       f"{name}: the generated {what} Secret is not kept on uninstall")
                expect(s.get("type") == "Opaque" and "stringData" not in s, f"{name}: {what} Secret {s.get('type')}")
                expect(set(s["data"]) == set(keys.values()),
                       f"{name}: {what} Secret keys {sorted(s['data'])}, want {sorted(keys.values())}")
                for field, key in keys.items():
                    value = base64.b64decode(s["data"][key]).decode()
                    length, least = GENERATED_KEY_LENGTHS[field]
                    expect(re.fullmatch(rf"[A-Za-z0-9]{{{length}}}", value) is not None and length >= least,
                           f"{name}: {key} is {len(value)} characters, want {length} letters and digits (the server needs {least})")
        # Random: two installs get different keys.
        for template in ("templates/secret-auth.yaml", "templates/secret-resume.yaml"):
            first, second = (run([self.helm, "template", RELEASE, CHART, "--namespace", NAMESPACE,
                                  "--show-only", template]).stdout for _ in range(2))
            expect(yaml.safe_load(first)["data"] != yaml.safe_load(second)["data"], f"two installs generated the same keys in {template}")

    def resume_key(self) -> None:
        # Every replica must verify the resume tokens of every other: each
        # render, auth on or off, mounts one key from one Secret (not a key
        # per pod, which the server would make alone), from
        # resume.existingSecret when set, and then generates none.
        seen = {"auth off": False, "resume.existingSecret": False}
        for name, docs in self.renders.items():
            v = self.values(name)
            pod, c = self.server_deployment(docs)
            env = plain_env(c)
            path = env.get("GAME_SESSION_RESUME_KEY_FILE")
            expect(path == RESUME_KEY_FILE, f"{name}: GAME_SESSION_RESUME_KEY_FILE={path!r}, want {RESUME_KEY_FILE}")
            expect("GAME_SESSION_RESUME_KEY" not in env, f"{name}: the resume key is given as a value")
            kind, source, key, _ = self.mounted(pod, c, path)
            generated = self.generated_secrets(name, docs)
            existing = v["resume"]["existingSecret"]
            if existing:
                seen["resume.existingSecret"] = True
                expect("resume" not in generated, f"{name}: generates {generated.get('resume', {}).get('metadata', {}).get('name')} "
                                                  f"beside resume.existingSecret {existing}")
                expect((kind, source) == ("Secret", existing), f"{name}: the resume key comes from {kind} {source}, not {existing}")
            else:
                expect("resume" in generated, f"{name}: no resume Secret generated, and no resume.existingSecret")
                want = generated["resume"]["metadata"]["name"]
                expect((kind, source) == ("Secret", want), f"{name}: the resume key comes from {kind} {source}, not {want}")
                expect(key in generated["resume"]["data"], f"{name}: the generated resume Secret lacks {key}")
            expect(key == v["resume"]["secretKey"], f"{name}: the resume key is {key}, want resume.secretKey {v['resume']['secretKey']}")
            if not v["auth"]["enabled"]:
                seen["auth off"] = True
        missing = [what for what, done in seen.items() if not done]
        expect(not missing, f"no values file renders the resume key with {missing}")

    def secret_lookup(self) -> None:
        # An upgrade renders against the cluster: the chart finds its Secret
        # and reuses its data; a key the Secret lacks is made. A stand-in API
        # server holds the Secret (with Helm's ownership marks, as a kept one
        # has), and `helm template --dry-run=server` runs the lookup.
        def kept_secret(name: str, data: dict[str, str]) -> dict:
            return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                    "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "Helm"},
                                 "annotations": {"meta.helm.sh/release-name": RELEASE,
                                                 "meta.helm.sh/release-namespace": NAMESPACE}}}

        name = f"{RELEASE}-game-session-auth"
        resume_name = f"{RELEASE}-game-session-resume"
        kept = base64.b64encode(b"k" * 40).decode()
        kept_resume = base64.b64encode(b"r" * 40).decode()
        objects = {("secrets", NAMESPACE, name): kept_secret(name, {"jwt-hs256-secret": kept}),
                   ("secrets", NAMESPACE, resume_name): kept_secret(resume_name, {"resume-key": kept_resume})}
        with StandInApiServer(objects) as api:
            home = self.tmp / "helm-home"
            env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(self.tmp / "kubeconfig")),
                   "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                   "HELM_DATA_HOME": str(home / "data")}
            proc = subprocess.run([str(self.helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                                   "--dry-run=server", "--disable-openapi-validation",
                                   "--show-only", "templates/secret-auth.yaml", "--show-only", "templates/secret-resume.yaml"],
                                  capture_output=True, text=True, env=env)
        expect(proc.returncode == 0, f"helm template --dry-run=server failed:\n{proc.stderr}")
        rendered = {d["metadata"]["name"]: d["data"] for d in load_all(proc.stdout)}
        expect(set(rendered) == {name, resume_name}, f"the upgrade rendered Secrets {sorted(rendered)}")
        # The resume key stays, so the pods of the upgrade accept the
        # tokens of the pods before it.
        expect(rendered[resume_name] == {"resume-key": kept_resume},
               f"the upgrade made a new resume key instead of keeping {kept_resume!r}: {rendered[resume_name]}")
        data = rendered[name]
        expect(data["jwt-hs256-secret"] == kept, f"the upgrade made a new HS256 secret instead of keeping {kept!r}")
        expect(len(base64.b64decode(data["admin-api-keys"])) == 48, f"the missing admin API key was not made: {data}")

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
            tls = "GAME_SESSION_TLS_CERT_FILE" in plain_env(c)
            targets = []
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
                targets.append(target)
                # gsctl speaks plain text to an http:// address: with TLS on,
                # only the health port answers it.
                expect(not tls or target == "health", f"{name}: test pod {t['metadata']['name']} checks the TLS port {target} in plain text")
                labels = t["metadata"]["labels"]
                for np in self.of_kind(docs, "NetworkPolicy"):
                    rules = [r for r in np["spec"].get("ingress", [])
                             if any(p.get("port") == port for p in r.get("ports", []))]
                    admitted = any("from" not in r or any(
                        set(peer) == {"podSelector"} and peer["podSelector"].get("matchLabels", {}).items() <= labels.items()
                        for peer in r["from"]) for r in rules)
                    expect(admitted, f"{name}: NetworkPolicy {np['metadata']['name']} keeps test pod "
                                     f"{t['metadata']['name']} off port {port}")
            expect("health" in targets, f"{name}: no helm test pod checks the health port (tests check {targets})")

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
             [f"{RELEASE}-game-session.{NAMESPACE}.svc:50051", "grpcurl -plaintext localhost:50053 grpc.health.v1.Health/Check",
              f"{RELEASE}-game-session-health.{NAMESPACE}.svc:50053",
              f"helm test {RELEASE}", f"GET /metrics on {RELEASE}-game-session-metrics.{NAMESPACE}.svc:9464",
              f"{RELEASE}-game-session-backend.{NAMESPACE}.svc:50052",
              f"kubectl get secret --namespace {NAMESPACE} {RELEASE}-game-session-auth -o jsonpath='{{.data.jwt-hs256-secret}}' | base64 -d > jwt-hs256-secret",
              f"kubectl get secret --namespace {NAMESPACE} {RELEASE}-game-session-auth -o jsonpath='{{.data.admin-api-keys}}' | base64 -d | head -n 1",
              "gsctl token --sub player-1 --secret-file jwt-hs256-secret",
              "gsctl token --sub ops --admin --secret-file jwt-hs256-secret",
              '-H "authorization: Bearer $ADMIN_KEY" -d \'{"mode":"relay","max_players":4}\' localhost:50052 gamesession.v1.SessionService/CreateSession']),
            (CHART / "ci" / "auth-off-values.yaml",
             ["WARNING: authentication is off", "grpcurl -plaintext -d '{\"mode\":\"relay\",\"max_players\":4}' localhost:50051 gamesession.v1.SessionService/CreateSession"]),
            (CHART / "ci" / "auth-keys-values.yaml",
             [r"-o jsonpath='{.data.hs256\.key}'", r"-o jsonpath='{.data.admin\.keys}'", "your Secret game-session-auth",
              "--admin-claim 'roles' --admin-claim-value 'game-admin'", "--issuer 'https://id.example.com/' --audience 'game-session'",
              "the public keys in game-session-jwt-keys and the JWKS at https://id.example.com/.well-known/jwks.json"]),
            (CHART / "ci" / "tls-values.yaml",
             ["Players (gRPC, TLS)", f"grpcurl -cacert ca.crt -authority {RELEASE}-game-session.{NAMESPACE}.svc localhost:50051 list",
              f"--ca-file ca.crt --tls-server-name {RELEASE}-game-session-backend.{NAMESPACE}.svc --cert-file client.crt --key-file client.key"]),
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
            # `[env: NAME=]`, or `[env: NAME]` for a setting whose value is hidden.
            env = re.search(r"\[env: (GAME_SESSION_[A-Z0-9_]+)[=\]]", block)
            if env:
                default = re.search(r"\[default: ([^\]]*)\]", block)
                server[env.group(1)] = default.group(1) if default else None
        expect(len(server) >= 20, f"parsed only {len(server)} server settings from --help")
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        chart = {"GAME_SESSION_" + re.sub(r"(?<!^)(?=[A-Z])", "_", k).upper(): v for k, v in values["config"].items()}
        unknown = sorted(set(chart) - set(server))
        expect(not unknown, f"config values the server does not have: {unknown}")
        missing = sorted(set(server) - set(chart) - set(DERIVED_ENV) - set(NOT_SET))
        expect(not missing, f"server settings the chart cannot set: {missing}")
        stale = sorted((set(DERIVED_ENV) | set(NOT_SET)) - set(server))
        expect(not stale, f"DERIVED_ENV or NOT_SET name settings the server does not have: {stale}")
        overlap = sorted(set(chart) & (set(DERIVED_ENV) | set(NOT_SET)))
        expect(not overlap, f"settings both in config and set another way: {overlap}")
        for env, value in chart.items():
            # A setting with no fixed default (the server works it out, as
            # the queued-bytes budget from the memory limit) is left empty.
            want = CHOSEN_DEFAULTS.get(env, "" if server[env] is None else server[env])
            expect(str(value) == want, f"config for {env} defaults to {value!r}, the server to {server[env]!r}")
        for env, default in DERIVED_DEFAULTS.items():
            expect(str(default(values)) == server[env],
                   f"the chart's defaults give {env}={default(values)!r}, the server's default is {server[env]!r}")
        # And every GAME_SESSION_* the chart renders is one the server reads;
        # every derived setting is rendered by some values file.
        rendered = set()
        for name, docs in self.renders.items():
            _, c = self.server_deployment(docs)
            for e in c["env"]:
                if e["name"].startswith("GAME_SESSION_"):
                    expect(e["name"] in server, f"{name}: renders {e['name']}, which the server does not read")
                    rendered.add(e["name"])
        expect(set(DERIVED_ENV) <= rendered, f"no values file renders {sorted(set(DERIVED_ENV) - rendered)}")

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
        ports = set(values["containerPorts"].values())
        expect(ports <= exposed, f"EXPOSE {sorted(exposed)} lacks the chart's ports {sorted(ports)}")
        # The listen addresses are explicit (with auth off the server alone
        # binds 127.0.0.1, which nothing outside the container reaches), on
        # the chart's ports.
        for var, port in (("GAME_SESSION_LISTEN", "grpc"), ("GAME_SESSION_HEALTH_LISTEN", "health")):
            m = re.search(rf"^(?:ENV\s+|\s+){var}=(\S+?)\s*\\?$", text, re.M)
            want = f"0.0.0.0:{values['containerPorts'][port]}"
            expect(m is not None and m.group(1) == want, f"the image's {var} is {m and m.group(1)}, want {want}")
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

    def materialise(self, name: str, pod: dict, c: dict, env: dict[str, str]) -> None:
        """Writes the files the render mounts under a directory of its own and
        points env's file settings at them: the generated Secret's data as
        rendered, and stand-ins for the Secrets and ConfigMaps it only names."""
        rendered = {s["metadata"]["name"]: s for s in self.of_kind(self.renders[name], "Secret")}
        root = self.tmp / f"{name.replace('/', '-')}.files"
        for var in [k for k in env if FILE_ENV.fullmatch(k)]:
            local = []
            for path in env[var].split(","):
                kind, source, key, _ = self.mounted(pod, c, path)
                target = root / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if kind == "Secret" and source in rendered:
                    target.write_bytes(base64.b64decode(rendered[source]["data"][key]))
                else:
                    target.write_bytes(self.fixtures.content(var, key))
                local.append(str(target))
            env[var] = ",".join(local)

    def credentials(self, env: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """With auth on, a player token for `drain-check` (from `gsctl token`
        and the render's HS256 secret when it has one), and an admin
        credential from each key source the render configures, by name.
        (None, {}) with auth off."""
        if not any(k in env for k in KEY_SOURCES):
            return None, {}
        now = int(time.time())
        claims: dict = {"iat": now, "exp": now + 600}
        flags = []
        if "GAME_SESSION_JWT_ISSUER" in env:
            claims["iss"] = env["GAME_SESSION_JWT_ISSUER"]
            flags += ["--issuer", env["GAME_SESSION_JWT_ISSUER"]]
        if "GAME_SESSION_JWT_AUDIENCE" in env:
            claims["aud"] = env["GAME_SESSION_JWT_AUDIENCE"]
            flags += ["--audience", env["GAME_SESSION_JWT_AUDIENCE"]]
        admin_claim = env.get("GAME_SESSION_ADMIN_CLAIM", "scope")
        admin_value = env.get("GAME_SESSION_ADMIN_CLAIM_VALUE", "game-session:admin")
        admin_claims = {**claims, "sub": "chart-check", admin_claim: admin_value}
        player_claims = {**claims, "sub": "drain-check"}
        player = None
        admins = {}
        if "GAME_SESSION_JWT_HS256_SECRET_FILE" in env:
            mint = [self.gsctl, "token", "--secret-file", env["GAME_SESSION_JWT_HS256_SECRET_FILE"], *flags]
            player = run([*mint, "--sub", "drain-check"]).stdout.strip()
            admins["an HS256 admin token from gsctl token"] = run(
                [*mint, "--sub", "chart-check", "--admin", "--admin-claim", admin_claim,
                 "--admin-claim-value", admin_value]).stdout.strip()
        if "GAME_SESSION_ADMIN_API_KEY_FILE" in env:
            lines = Path(env["GAME_SESSION_ADMIN_API_KEY_FILE"]).read_text().splitlines()
            admins["the admin API key"] = next(line.strip() for line in lines if line.strip())
        for path in filter(None, env.get("GAME_SESSION_JWT_PUBLIC_KEY_FILES", "").split(",")):
            alg, key = self.fixtures.private_of[Path(path).read_bytes()]
            admins[f"an {alg} admin token verified by {Path(path).name}"] = self.fixtures.jwt(alg, key, admin_claims)
            player = player or self.fixtures.jwt(alg, key, player_claims)
        if "GAME_SESSION_JWKS_FILE" in env or "GAME_SESSION_JWKS_URL" in env:
            key, kid = self.fixtures.jwks_key, Fixtures.JWKS_KID
            admins["an RS256 admin token verified by the JWKS"] = self.fixtures.jwt("RS256", key, admin_claims, kid)
            player = player or self.fixtures.jwt("RS256", key, player_claims, kid)
        return player, admins

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
        # The mounted files, from the render's Secret or stand-ins.
        self.materialise(name, pod, c, env)
        fixtures = self.fixtures
        # An http:// export goes to a closed local port: the collector is
        # down. An https:// one goes to a stand-in that hangs up after the
        # TLS handshake, which shows the render's CA file and client
        # certificate in use.
        https_export = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").startswith("https://")
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env and not https_export:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        tls = "GAME_SESSION_TLS_CERT_FILE" in env
        mtls = "GAME_SESSION_TLS_CLIENT_CA_FILE" in env
        log = self.tmp / f"{name.replace('/', '-')}.server.log"
        grpc = local[container_port(c, "grpc")]
        # SessionService is on the backend port when there is one; mutual TLS
        # only there.
        api = local[container_port(c, "backend") or container_port(c, "grpc")]

        def gsctl(port: int, *args: str, token: str | None = None, client_cert: bool = False,
                  plain: bool = False) -> list:
            scheme = "https" if tls and not plain else "http"
            cmd = [self.gsctl, "--addr", f"{scheme}://127.0.0.1:{port}", "--timeout", "2s"]
            if scheme == "https":
                cmd += ["--ca-file", fixtures.ca_crt]
            if client_cert:
                cmd += ["--cert-file", fixtures.client_crt, "--key-file", fixtures.client_key]
            if token:
                cmd += ["--token", token]
            return cmd + list(args)

        def backend(*args: str, token: str | None, client_cert: bool = mtls) -> subprocess.CompletedProcess:
            return run(gsctl(api, "--json", *args, token=token, client_cert=client_cert), ok=False)

        server = player = jwks_server = collector = None
        try:
            if https_export:
                collector = StandInCollector(fixtures).__enter__()
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"https://127.0.0.1:{collector.port}"
            # The JWKS URL is served here, over HTTPS with the test CA's
            # certificate, which the render's CA file (a stand-in) trusts.
            if "GAME_SESSION_JWKS_URL" in env:
                expect(env["GAME_SESSION_JWKS_URL"].startswith("https://"), f"JWKS URL {env['GAME_SESSION_JWKS_URL']}")
                expect("GAME_SESSION_JWKS_CA_FILE" in env, "the JWKS URL's test certificate needs a CA file to be trusted")
                jwks_server = Served(lambda path: (200, "application/json", fixtures.jwks),
                                     tls=(fixtures.server_crt, fixtures.server_key)).__enter__()
                env["GAME_SESSION_JWKS_URL"] = f"https://127.0.0.1:{jwks_server.port}/.well-known/jwks.json"
            player_token, admins = self.credentials(env)
            admin = next(iter(admins.values()), None)
            with open(log, "w") as out:
                server = subprocess.Popen([self.server, *c.get("args", [])], env=env, stdout=out, stderr=subprocess.STDOUT)

            def health(port: int, service: str | None) -> int:
                # The probes: plain text, no credentials.
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
            # The helm test pods' checks, each through its Service's target port.
            services = {s["metadata"]["name"]: s for s in self.of_kind(self.renders[name], "Service")}
            for t in self.of_kind(self.renders[name], "Pod"):
                cmd = list(t["spec"]["containers"][0]["command"])
                i = cmd.index("--addr") + 1
                scheme, host, port = re.fullmatch(r"(\w+)://([^.]+)\.[^:]+:(\d+)", cmd[i]).groups()
                target = next(p["targetPort"] for p in services[host]["spec"]["ports"] if p["port"] == int(port))
                cmd[i] = f"{scheme}://127.0.0.1:{local[container_port(c, target)]}"
                proc = run([self.gsctl, *cmd[1:]], ok=False)
                expect(proc.returncode == 0, f"helm test pod {t['metadata']['name']} fails: {proc.stdout}{proc.stderr}")
            # The gRPC ports serve health too, in TLS when it is on.
            expect(run(gsctl(grpc, "health"), ok=False).returncode == 0, "health fails on the gRPC port")
            if container_port(c, "backend"):
                expect(run(gsctl(api, "health", client_cert=mtls), ok=False).returncode == 0,
                       "the backend port is not serving")
            if tls:
                expect(run(gsctl(grpc, "health", plain=True), ok=False).returncode != 0,
                       "the gRPC port answers in plain text with TLS on")
            if mtls:
                proc = backend("list", token=admin, client_cert=False)
                expect(proc.returncode != 0, f"the backend port serves a client without a certificate: {proc.stdout}")
            # With auth on: no token, or a player's, is refused on
            # SessionService; an admin credential from each source works.
            if admins:
                proc = backend("list", token=None)
                expect(proc.returncode != 0 and "error: UNAUTHENTICATED:" in proc.stderr,
                       f"SessionService without a token: {proc.stdout}{proc.stderr}")
                proc = backend("list", token=player_token)
                expect(proc.returncode != 0 and "error: PERMISSION_DENIED:" in proc.stderr,
                       f"SessionService with a player token: {proc.stdout}{proc.stderr}")
                for what, credential in admins.items():
                    proc = backend("list", token=credential)
                    expect(proc.returncode == 0, f"SessionService refuses {what}: {proc.stderr}\n{log.read_text()[-2000:]}")
            # A player holds a session through the drain.
            player = subprocess.Popen(gsctl(grpc, "play", "--mode", "relay", "--player-id", "drain-check",
                                            token=player_token),
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while True:
                listed = backend("list", token=admin).stdout
                if '"playerCount":1' in listed:
                    break
                if player.poll() is not None:
                    raise CheckFailed(f"the player left: {player.stderr.read().decode()}")
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
            listed = backend("list", token=admin).stdout
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
            # The spans (flushed at the latest at shutdown) went to the
            # collector over TLS: trusted through the render's CA file, with
            # its client certificate; without a CA file, the test CA is not
            # trusted (only the system's roots are).
            if collector:
                with collector.lock:
                    connections, handshakes, failures = collector.connections, list(collector.handshakes), list(collector.failures)
                expect(connections > 0, f"the server never connected to the https:// collector:\n{log.read_text()[-2000:]}")
                if "OTEL_EXPORTER_OTLP_CERTIFICATE" in env:
                    client = "chart-check client" if "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" in env else None
                    expect(handshakes, f"no TLS handshake with the collector completed, though the render's CA "
                                       f"signed its certificate: {failures}\n{log.read_text()[-2000:]}")
                    expect(set(handshakes) == {client},
                           f"the server presented client certificates {handshakes} to the collector, want {client!r}")
                else:
                    expect(not handshakes, "the server trusted the collector's test CA without OTEL_EXPORTER_OTLP_CERTIFICATE")
            if env.get("GAME_SESSION_LOG_FORMAT") == "json":
                lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
                expect(lines, "no log lines")
            # The server read the mounted resume key: it made no random one.
            warned = [l for l in log.read_text().splitlines() if RANDOM_RESUME_KEY_WARNING in l]
            expect(not warned, f"the server signs resume tokens with a random key: {warned[0] if warned else ''}")
        finally:
            for process in (server, player):
                if process and process.poll() is None:
                    process.kill()
                    process.wait()
            if jwks_server:
                jwks_server.__exit__(None, None, None)
            if collector:
                collector.__exit__(None, None, None)

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
        self.check("defaults: auth on, backend on its own port, TLS off, listen addresses explicit", self.chart_defaults)
        self.check("probes are native gRPC on the health port", self.probes)
        self.check("Secret and ConfigMap files: env paths, read-only mounts, keys", self.files)
        self.check("generated auth and resume Secrets: only without existingSecret, random keys of the right length, kept",
                   self.generated_secret)
        self.check("generated auth and resume Secrets: an upgrade reuses their data (lookup)", self.secret_lookup)
        self.check("resume key: one Secret's key mounted in every render, auth on or off; resume.existingSecret instead of a generated one",
                   self.resume_key)
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
        self.check("Dockerfile: hadolint, the chart's ports and listen addresses, the build context", self.dockerfile)
        for name in sorted(self.renders):
            self.check(f"server runs with {name}'s env and files, passes its probes and checks, exits 0 on SIGTERM",
                       self.boots, name)


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
