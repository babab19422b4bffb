# The peer of `agentid check` in `make bench-peers`: the same structural rules and literal-key detectors
# as Rego for conftest, written the way a competent policy author would for a GitOps pipeline (rules
# keyed by kind, the pod spec and container list computed once per document, one `deny` rule per agentid
# rule id, messages that name the rule, the object and the field, never the value). The ValidatingAdmissionPolicy
# beside it (bench/peers/vap.yaml) covers exactly the same rules; the list of what only agentid covers is
# there too.
#
#   conftest test --policy bench/peers/rego manifests.yaml
package main

import rego.v1

# A key of every literal-key detector of src/core/admission/detectors.rs, as one RE2 pattern.
literal_key := `-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----|\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{82}\b|\bsk-ant-(?:api03|admin01)-[A-Za-z0-9_-]{80,}AA|\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|https?://hooks\.slack\.com/(?:services|workflows|triggers)(?:/[A-Za-z0-9_-]+){3,}|\bxox[abeprs]-[0-9]+-[0-9A-Za-z][0-9A-Za-z-]{9,}|\bxapp-[0-9]+-[A-Za-z0-9]+-[0-9]+-[A-Za-z0-9]{10,}|\bAIza[0-9A-Za-z_-]{35}|\b(?:sk|rk)_(?:test|live)_[0-9A-Za-z]{10,99}\b|\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}`

template_kinds := {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "ReplicationController"}

pod_spec := input.spec if input.kind == "Pod"

pod_spec := input.spec.jobTemplate.spec.template.spec if input.kind == "CronJob"

pod_spec := input.spec.template.spec if input.kind in template_kinds

subject := sprintf("%s %s/%s", [input.kind, object.get(input.metadata, "namespace", "default"), input.metadata.name])

containers := [c |
	some list in ["containers", "initContainers", "ephemeralContainers"]
	some c in object.get(pod_spec, list, [])
]

deny contains msg if {
	some c in containers
	some e in object.get(c, "env", [])
	e.valueFrom.secretKeyRef
	msg := sprintf("[static-secret-env] %s: container %s env %s reads a Secret via secretKeyRef", [subject, c.name, e.name])
}

deny contains msg if {
	some c in containers
	some e in object.get(c, "envFrom", [])
	e.secretRef
	msg := sprintf("[static-secret-envfrom] %s: container %s imports a Secret via envFrom.secretRef", [subject, c.name])
}

deny contains msg if {
	some v in object.get(pod_spec, "volumes", [])
	secret_volume(v)
	msg := sprintf("[static-secret-volume] %s: volume %s mounts a Secret", [subject, v.name])
}

secret_volume(v) if v.secret

secret_volume(v) if {
	some s in v.projected.sources
	s.secret
}

secret_volume(v) if v.csi.driver == "secrets-store.csi.k8s.io"

secret_volume(v) if v.csi.volumeAttributes.secretProviderClass

service_account := pod_spec.serviceAccountName if pod_spec.serviceAccountName != ""

else := pod_spec.serviceAccount if pod_spec.serviceAccount != ""

else := "default"

deny contains msg if {
	pod_spec
	service_account == "default"
	msg := sprintf("[default-service-account] %s: runs as the namespace's default ServiceAccount", [subject])
}

deny contains msg if {
	some c in containers
	some field, value in literals(c)
	regex.match(literal_key, value)
	msg := sprintf("[hardcoded-credential] %s: container %s %s holds a literal credential", [subject, c.name, field])
}

literals(c) := object.union_n([
	{sprintf("env[%d].value", [i]): e.value | some i, e in object.get(c, "env", []); is_string(e.value)},
	{sprintf("args[%d]", [i]): a | some i, a in object.get(c, "args", [])},
	{sprintf("command[%d]", [i]): a | some i, a in object.get(c, "command", [])},
])
