#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the repository's fixtures (tests/fixtures, config/samples) and the
inputs of the unit tests. Run from anywhere: `python3 fuzz/seed.py`. Idempotent; files are named by
content hash, so re-running adds nothing twice. Needs PyYAML (Debian: python3-yaml)."""

import hashlib
import json
import pathlib
import re

import yaml

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def manifests():
    files = sorted(ROOT.glob("tests/fixtures/**/*.yaml")) + sorted(ROOT.glob("config/samples/*.yaml"))
    for f in files:
        yield f, f.read_text()


def objects():
    for _, text in manifests():
        try:
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict):
                    yield doc
                    if doc.get("kind") == "List":
                        yield from (i for i in doc.get("items", []) if isinstance(i, dict))
        except yaml.YAMLError:
            pass


def string_literals(path, after="mod tests"):
    """The string literals of a Rust file's tests (plain "..." and raw r#"..."# strings)."""
    src = path.read_text()
    src = src[src.find(after):] if after in src else src
    out = [m.group(1) for m in re.finditer(r'r#"(.*?)"#', src, re.S)]
    for m in re.finditer(r'(?<![r#\w])"((?:[^"\\\n]|\\.)*)"', src):
        try:
            out.append(json.loads('"' + m.group(1) + '"'))
        except ValueError:
            out.append(m.group(1))
    return [s for s in out if s]


# --- check_manifests: every fixture file as it is, and each document on its own.
for f, text in manifests():
    put("check_manifests", text)
    for doc in re.split(r"(?m)^---\s*$", text):
        if doc.strip():
            put("check_manifests", doc)
put("check_manifests", json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects())[:6]}))

# --- admission_review: each object as the apiserver sends it, CREATE and UPDATE.
USERS = [
    {"username": "alice", "groups": ["system:authenticated"]},
    {"username": "system:serviceaccount:agents:agent-triage-bot", "groups": ["system:serviceaccounts"]},
    {"username": "system:serviceaccount:kube-system:replicaset-controller"},
]
PLURAL = {"Pod": "pods", "Deployment": "deployments", "CronJob": "cronjobs", "Job": "jobs",
          "AgentIdentity": "agentidentities", "ToolGrant": "toolgrants", "AgentTask": "agenttasks"}
for i, obj in enumerate(objects()):
    kind = obj.get("kind", "")
    group, _, version = obj.get("apiVersion", "v1").rpartition("/")
    ns = (obj.get("metadata") or {}).get("namespace", "agents")
    for op, user in (("CREATE", USERS[i % 3]), ("UPDATE", USERS[(i + 1) % 3])):
        req = {
            "uid": f"uid-{i}", "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": PLURAL.get(kind, kind.lower() + "s")},
            "name": (obj.get("metadata") or {}).get("name"), "namespace": ns, "operation": op,
            "userInfo": user, "object": obj,
        }
        if op == "UPDATE":
            req["oldObject"] = obj
        put("admission_review", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                            "request": req}))
put("admission_review", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                    "request": {"uid": "d", "operation": "DELETE", "userInfo": {}, "kind":
                                                {"group": "", "version": "v1", "kind": "Pod"}}}))

# --- detectors: the literals of the detector tests, as values and as NAME=value.
for s in string_literals(ROOT / "src/core/admission/detectors.rs"):
    put("detectors", s)
for obj in objects():
    for m in re.finditer(r"'name': '([^']*)', 'value': '([^']*)'", str(obj)):
        put("detectors", f"{m.group(1)}={m.group(2)}")

# --- duration: test literals that look like durations, and the fixtures' ttl/tokenTTL.
for s in string_literals(ROOT / "src/api/duration.rs", after="mod tests") + ["10m", "1h30m", "90s", "250ms",
                                                                           "720h", "0s", " 5m ", "1h1m1s1ms"]:
    if len(s) < 40:
        put("duration", s)

# --- destination: pattern \n destination pairs from the matching tests.
lits = [s for s in string_literals(ROOT / "src/core/pdp/destination.rs") if len(s) < 200]
urls = [s for s in lits if "://" in s]
patterns = [s for s in lits if "://" in s or "." in s]
for i, p in enumerate(patterns):
    put("destination", f"{p}\n{urls[i % len(urls)] if urls else p}")
    put("destination", f"{p}\n{p}")

# --- cel_condition: every string literal of the condition tests that may be a condition.
for s in string_literals(ROOT / "src/core/pdp/condition.rs"):
    if any(w in s for w in ("request", "agent", "task", "grant", "now", "==", "true", "false", "(")):
        put("cel_condition", s)

# --- pdp_authzen: evaluation bodies from the HTTP tests, and built ones.
for s in string_literals(ROOT / "src/pdp/http.rs"):
    if s.lstrip().startswith("{"):
        put("pdp_authzen", s)
ev = {"subject": {"type": "agent", "id": "agents/triage-bot"},
      "action": {"name": "create", "properties": {"method": "POST"}},
      "resource": {"type": "tool", "id": "github.create_issue",
                   "properties": {"destination": "https://api.github.com/repos/acme/payments/issues",
                                  "sensitivity": "internal", "arguments": ["title", "body"]}},
      "context": {"task": "triage-ticket-42"}}
put("pdp_authzen", json.dumps(ev))
crm = {"action": {"name": "read"}, "resource": {"type": "tool", "id": "crm", "properties": {
    "destination": "https://a.example.com/x", "arguments": {"fields": 1}}}, "context": {"method": "GET"}}
put("pdp_authzen", json.dumps(crm))
put("pdp_authzen", json.dumps({**ev, "evaluations": [{"action": {"name": "read"}}, crm, {}]}))

# --- pdp_forward_auth: proxy sub-requests.
put("pdp_forward_auth", "GET /forward-auth\nauthorization: Bearer x.y.z\nx-forwarded-host: api.github.com\n"
    "x-forwarded-uri: /repos/acme/payments/issues\nx-forwarded-method: POST\nx-agentid-tool: github.create_issue\n"
    "x-agentid-action: create\nx-agentid-sensitivity: internal\nx-agentid-task: triage-ticket-42\n")
put("pdp_forward_auth", "POST /forward-auth/mcp\nhost: a.example.com\nx-original-uri: /mcp?x=1\n"
    "x-original-proto: https\nmcp-method: tools/call\nmcp-name: crm\n")
put("pdp_forward_auth", "GET /\nx-original-host: crm.internal\nx-original-uri: /api/x\nx-agentid-tool: crm\n")


# --- pdp_ext_authz: CheckRequests in protobuf wire format (the grpc tests' cases).
def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def pmap(tag, d):
    return b"".join(field(tag, field(1, k) + field(2, v)) for k, v in d.items())


def check_request(method="POST", host="tools.example.com", path="/mcp?session=1", headers=None, body="",
                  ext=None, scheme="https", principal=None, header_map=None):
    http = field(2, method) + pmap(3, headers or {}) + field(4, path) + field(5, host) + field(6, scheme)
    if body:
        http += field(11, body)
    if header_map:
        http += field(13, b"".join(field(1, field(1, k) + field(2, v)) for k, v in header_map.items()))
    attrs = field(4, field(2, http)) + pmap(10, ext or {})
    if principal:
        attrs = field(1, field(4, principal)) + attrs
    return field(1, attrs)


MCP = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":"x"}}}'
AUTH = {"authorization": "Bearer tok-1"}
for r in [
    check_request(headers={**AUTH, "mcp-method": "tools/call", "mcp-name": "search"}),
    check_request(headers=AUTH, body=MCP),
    check_request(headers={"mcp-method": "tools/call", "mcp-name": "search"}, body=MCP,
                  ext={"tool": "crm", "action": "read", "task": "t1"}),
    check_request(ext={"tool": "crm", "action": "read", "sensitivity": "Confidential", "task": "t1"},
                  host="crm.internal", path="/api/x", method="GET", principal="spiffe://cluster.local/ns/agents/sa/x"),
    check_request(headers={"x-envoy-auth-partial-body": "true"}, body=MCP[:40], ext={"tool": "crm"}),
    check_request(headers={"content-encoding": "gzip"}, body="\x1f\x8b..", ext={"tool": "crm"}),
    check_request(host="", header_map={":authority": "api.github.com", "authorization": "Bearer a"},
                  path="/repos/acme/payments/issues", ext={"tool": "github.create_issue", "action": "create"}),
    check_request(body="[" + MCP + "]", ext={"tool": "crm"}),
    field(1, b""),
]:
    put("pdp_ext_authz", r)

for t in sorted(p.name for p in CORPUS.iterdir()):
    print(f"{t}: {len(list((CORPUS / t).iterdir()))} seeds")
