#!/usr/bin/env python3
"""Manifests for the offline side-by-side (`make bench-peers`, bench/peers/run.sh): `agentid check` and
conftest (bench/peers/rego/policy.rego) judge the same file.

    python3 bench/peers/gen.py N manifests.yaml expected.tsv

Like bench/check/run.sh's generator — what a rendered GitOps repository looks like: per 50 workloads an
AgentIdentity and a ToolGrant, a third of the workloads agents' (agentid.dev/agent label, the agent's
ServiceAccount, no automounted token), agents last as kustomize sorts them — but every supported kind
(Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController) in turn, and a
quarter of the workloads with one violation of a rule both peers implement, each rule and every
literal-key detector in turn, in env values, args and command. Keys are random (fixed seed), never
documentation examples. expected.tsv: one line per workload, `kind<TAB>namespace/name<TAB>rules` (rules
comma-separated, sorted, `-` for none): what both judges must find.
"""
import base64
import json
import random
import sys

n, out_path, expected_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = random.Random(11)
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MIXED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def rand(alphabet, k):
    return "".join(rng.choice(alphabet) for _ in range(k))


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


KEYS = [
    lambda: "AKIA" + rand(UPPER, 16),
    lambda: "ghp_" + rand(MIXED, 36),
    lambda: "github_pat_" + rand(MIXED, 22) + "_" + rand(MIXED, 59),
    lambda: "sk-ant-api03-" + rand(MIXED, 93) + "AA",
    lambda: "sk-proj-" + rand(MIXED, 48),
    lambda: "https://hooks.slack.com/services/T" + rand(UPPER, 8) + "/B" + rand(UPPER, 8) + "/" + rand(MIXED, 24),
    lambda: "xoxb-" + rand("0123456789", 12) + "-" + rand("0123456789", 13) + "-" + rand(MIXED, 24),
    lambda: "AIza" + rand(MIXED, 35),
    lambda: "sk_live_" + rand(MIXED, 24),
    lambda: b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": f"svc-{rand(UPPER, 6)}", "exp": 1893456000})
    + "." + rand(MIXED, 43),
    lambda: "-----BEGIN RSA PRIVATE KEY-----\n" + rand(MIXED, 64) + "\n" + rand(MIXED, 64) + "\n-----END RSA PRIVATE KEY-----",
]
KINDS = ["Deployment", "Pod", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "ReplicationController"]
API = {"Pod": "v1", "ReplicationController": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}
# The violations, in turn: (rule, how).
VIOLATIONS = ["env-secret", "envfrom-secret", "secret-volume", "projected-secret", "csi-secret", "sa-unset",
              "sa-default", "sa-deprecated-default"] + [f"key-{k}" for k in range(len(KEYS))]
RULE = {"env-secret": "static-secret-env", "envfrom-secret": "static-secret-envfrom",
        "secret-volume": "static-secret-volume", "projected-secret": "static-secret-volume",
        "csi-secret": "static-secret-volume", "sa-unset": "default-service-account",
        "sa-default": "default-service-account", "sa-deprecated-default": "default-service-account"}


def q(s):
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar


agents = max(1, n // 50)
workloads = n - 2 * agents
docs, expected = [], []
bad_count = 0
for i in range(workloads):
    kind = KINDS[(i + i // 4) % len(KINDS)]  # every kind in turn, the violating quarter too
    agent = i % agents if i % 3 == 0 else None
    violation = None
    if i % 4 == 1:
        violation = VIOLATIONS[bad_count % len(VIOLATIONS)]
        bad_count += 1
    name = f"app-{i}"
    ns = f"team-{(agent * 3) % 20}" if agent is not None else f"team-{i % 20}"
    labels = {"app": name}
    if agent is not None:
        labels["agentid.dev/agent"] = f"agent-{agent}"
    sa = f"agent-agent-{agent}" if agent is not None else name
    env = [{"name": "LOG_LEVEL", "value": "info"}, {"name": "UPSTREAM_URL", "value": "https://api.example.com/v1"}]
    env_from = [{"configMapRef": {"name": f"{name}-settings"}}]
    args = ["--port=8080", "--log-format=json"]
    command = ["/app/server"]
    volumes = [{"name": "cache", "emptyDir": {}}]
    spec_sa = {"serviceAccountName": sa}
    if violation == "env-secret":
        env.append({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}})
    elif violation == "envfrom-secret":
        env_from.append({"secretRef": {"name": "db", "optional": True}})
    elif violation == "secret-volume":
        volumes.append({"name": "creds", "secret": {"secretName": "db"}})
    elif violation == "projected-secret":
        volumes.append({"name": "creds", "projected": {"sources": [{"configMap": {"name": "ca"}}, {"secret": {"name": "db"}}]}})
    elif violation == "csi-secret":
        volumes.append({"name": "creds", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                                  "volumeAttributes": {"secretProviderClass": "vault-db"}}})
    elif violation == "sa-unset":
        spec_sa = {}
    elif violation == "sa-default":
        spec_sa = {"serviceAccountName": "default"}
    elif violation == "sa-deprecated-default":
        spec_sa = {"serviceAccount": "default"}
    elif violation is not None:
        key = KEYS[int(violation.split("-")[1])]()
        where = bad_count % 3
        if where == 0:
            env.append({"name": "TOOL_ENDPOINT_AUTH", "value": key})
        elif where == 1 and "\n" not in key:
            args.append(f"--upstream-auth={key}")
        else:
            command = ["/app/server", key] if "\n" not in key else command
            if "\n" in key:
                env.append({"name": "TOOL_ENDPOINT_AUTH", "value": key})
    if agent is not None and not spec_sa.get("serviceAccountName", "").startswith("agent-"):
        # An agent workload off its ServiceAccount is also shared-service-account in agentid; keep this
        # generator's agent workloads on theirs, so every violation is one both peers know.
        labels.pop("agentid.dev/agent")
    container = {"name": "app", "image": f"registry.example.com/{name}:1.{i % 7}.0", "command": command,
                 "args": args, "env": env, "envFrom": env_from, "ports": [{"containerPort": 8080}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    pod_spec = {**spec_sa, "automountServiceAccountToken": False, "containers": [container], "volumes": volumes}
    if kind in ("Job", "CronJob"):
        pod_spec["restartPolicy"] = "Never"
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    meta = {"name": name, "namespace": ns, "labels": {"app": name}}
    if kind == "Pod":
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {**meta, "labels": labels}, "spec": pod_spec}
    elif kind == "CronJob":
        obj = {"apiVersion": "batch/v1", "kind": kind, "metadata": meta,
               "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}}
    elif kind == "Job":
        obj = {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": {"template": template}}
    elif kind == "ReplicationController":
        obj = {"apiVersion": "v1", "kind": kind, "metadata": meta,
               "spec": {"replicas": 2, "selector": {"app": name}, "template": template}}
    else:
        obj = {"apiVersion": "apps/v1", "kind": kind, "metadata": meta,
               "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}}
        if kind != "DaemonSet":
            obj["spec"]["replicas"] = 2
    docs.append(obj)
    rule = RULE.get(violation, "hardcoded-credential") if violation else "-"
    expected.append(f"{kind}\t{ns}/{name}\t{rule}")

for a in range(agents):
    ns = f"team-{(a * 3) % 20}"
    docs.append({"apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
                 "metadata": {"name": f"agent-{a}-tools", "namespace": ns},
                 "spec": {"agentRef": {"name": f"agent-{a}"},
                          "tools": [{"name": "crm.read", "actions": ["read"],
                                     "destinations": ["https://crm.internal/api/accounts/"],
                                     "maxDataSensitivity": "internal"}],
                          "validUntil": "2030-01-01T00:00:00Z"}})
    docs.append({"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
                 "metadata": {"name": f"agent-{a}", "namespace": ns},
                 "spec": {"owner": f"team-{a % 20}", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"}})


def to_yaml(v, indent=0):
    """Block YAML for these plain structures (strings quoted as JSON, which YAML reads the same)."""
    pad = " " * indent
    if isinstance(v, dict):
        lines = []
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(x, indent + 2))
            else:
                lines.append(f"{pad}{k}: {scalar(x)}")
        return "\n".join(lines)
    lines = []
    for x in v:
        if isinstance(x, (dict, list)) and x:
            body = to_yaml(x, indent + 2)
            lines.append(f"{pad}- {body.lstrip()}")
        else:
            lines.append(f"{pad}- {scalar(x)}")
    return "\n".join(lines)


def scalar(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return q(x)


with open(out_path, "w") as f:
    f.write("\n---\n".join(to_yaml(d) for d in docs) + "\n")
with open(expected_path, "w") as f:
    f.write("\n".join(expected) + "\n")
