//! Fixtures shared by the benches.

use serde_json::{Value, json};

/// A typical agent Deployment: two containers, an init sidecar, a dozen env vars, args, volumes.
pub fn typical() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "triage-bot", "namespace": "agents", "labels": {"app": "triage-bot"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "triage-bot"}}, "template": {
            "metadata": {"labels": {"app": "triage-bot", "agentid.dev/agent": "triage-bot", "version": "1.4.2"}},
            "spec": {
                "serviceAccountName": "agent-triage-bot", "automountServiceAccountToken": false,
                "initContainers": [{"name": "proxy", "image": "registry.example.com/egress-proxy:3", "restartPolicy": "Always",
                    "args": ["--listen=127.0.0.1:15001", "--upstream-timeout=30s", "--log-level=info"]}],
                "containers": [
                    {"name": "agent", "image": "registry.example.com/triage-bot:1.4.2",
                     "command": ["python", "-m", "triage_bot"], "args": ["--queue", "support", "--max-steps", "40"],
                     "env": [
                        {"name": "LOG_LEVEL", "value": "info"}, {"name": "TOKEN_PATH", "value": "/var/run/agentid/token"},
                        {"name": "TOOLS_URL", "value": "https://tools.example.com/v1"}, {"name": "MODEL", "value": "large-2026-05"},
                        {"name": "MAX_TOKENS", "value": "4096"}, {"name": "SUPPORT_EMAIL", "value": "help@example.com"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "REGION", "value": "eu-west-1"}, {"name": "FEATURE_FLAGS", "value": "triage,summarize"},
                        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4317"}],
                     "envFrom": [{"configMapRef": {"name": "triage-bot-settings"}}],
                     "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                     "volumeMounts": [{"name": "agent-token", "mountPath": "/var/run/agentid"}, {"name": "cache", "mountPath": "/cache"}]},
                    {"name": "metrics", "image": "registry.example.com/exporter:1", "args": ["--port=9090"]}],
                "volumes": [
                    {"name": "agent-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "https://tools.example.com", "expirationSeconds": 600, "path": "token"}}]}},
                    {"name": "cache", "emptyDir": {}}]}}}
    })
}
