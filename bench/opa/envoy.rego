# agentid's decision over Envoy ext_authz v3 (gRPC), written in Rego for OPA's Envoy plugin
# (opa-envoy-plugin, OPA's `-envoy` build), so that the two can be measured side by side on the same
# grants (`make bench-pdp-grpc`, benches/pdp_grpc_load.rs).
#
# The same policy as bench/opa/policy.rego (read its header: how it was written, why it is a fair peer,
# what it leaves out), on the same data (`data.config`, `data.accounts`, `data.agents`, `data.grants`,
# indexed the same way, destination patterns pre-parsed), with the same checks in the same order and the
# same reason codes. Only the input differs: the plugin's `input` is the CheckRequest (protobuf JSON
# names), so the question is read as agentid's ext_authz interface reads it (src/pdp/grpc.rs):
#
# - the token: `Authorization: Bearer <jwt>` among `input.attributes.request.http.headers` (lower-case keys);
# - the tool, action and sensitivity: the route's `input.attributes.contextExtensions` (`tool`, `action` —
#   default the HTTP method in lower case —, `sensitivity` — default `data.config.default_sensitivity`);
# - the destination: `scheme://host` + path of `input.attributes.request.http` (scheme default https),
#   query and fragment cut off.
#
# The answer is the plugin's object form (`plugins.envoy_ext_authz_grpc.path=agentid/envoy/result`), shaped
# like agentid's CheckResponse: allowed → the upstream request loses `authorization`; denied → 403, or 401
# when no credential was accepted, with `x-agentid-reason` and the decision as JSON; either way
# `dynamic_metadata` has `decision`, `reason` and `grant`. The plugin has no UNAUTHENTICATED gRPC status: a
# denial is PERMISSION_DENIED, the 401 is in the denied response. No decision id (agentid mints one per
# decision).
#
# Differences from policy.rego forced by the plugin (v1.14.1-envoy):
# - it gives evaluation no inter-query *value* cache (its `InterQueryBuiltinValueCache()` returns an unset
#   cache), so `caching.inter_query_builtin_value_cache.named.io_jwt` has no effect here: OPA verifies the
#   ES256 signature of every call, while agentid (and OPA's REST server in pdp_load) verify each token once.
#   The bench therefore also measures OPA without verification (below), the lower bound of what a cache
#   could buy.
# - `verify_token` comes from `data.config.verify_token` (true), overridable per request by the route's
#   `contextExtensions.bench_verify_token: "false"`. A benchmark knob only: a real deployment must not let
#   anything but its own configuration turn verification off. agentid has no such switch.
package agentid.envoy

req := input.attributes.request.http

ext := object.get(input.attributes, "contextExtensions", {})

sensitivity_rank := {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}

# How far a grant got before failing: the deny reason is that of the furthest (as in agentid).
stage := {"grant-not-active": 0, "action-not-granted": 1, "destination-not-granted": 2, "sensitivity-too-high": 3}

verify := false if {
	ext.bench_verify_token == "false"
} else := data.config.verify_token

# --- Who is asking -----------------------------------------------------------------------------------------

token := t if {
	[kind, t] := split(req.headers.authorization, " ")
	lower(kind) == "bearer"
}

claims := payload if {
	verify
	[valid, _, payload] := io.jwt.decode_verify(token, {
		"cert": data.config.jwks,
		"iss": data.config.issuer,
		"aud": data.config.audience,
	})
	valid
}

claims := payload if {
	not verify
	[_, payload, _] := io.jwt.decode(token)
}

# The ServiceAccount must be the one agentid created for an agent (same uid), and that agent the one that
# owns it now (same uid): a re-created agent or ServiceAccount does not inherit old tokens.
caller := {"namespace": ns, "agent": account.agent} if {
	k8s := claims["kubernetes.io"]
	ns := k8s.namespace
	sa := k8s.serviceaccount
	claims.sub == concat(":", ["system:serviceaccount", ns, sa.name])
	account := data.accounts[ns][sa.name]
	account.uid == sa.uid
	data.agents[ns][account.agent].uid == account.agent_uid
}

agent := data.agents[caller.namespace][caller.agent]

# --- The question ------------------------------------------------------------------------------------------

tool := ext.tool

action := object.get(ext, "action", lower(req.method))

sensitivity := lower(object.get(ext, "sensitivity", data.config.default_sensitivity))

scheme := object.get(req, "scheme", "https")

# The destination without query and fragment (they never take part in matching), and its parts.
destination := split(split(concat("", [scheme, "://", req.host, req.path]), "#")[0], "?")[0]

url_parts := split(destination, "/") # ["https:", "", "host[:port]", "path"...]

rules := data.grants[caller.namespace][caller.agent][tool]

# --- One grant entry ---------------------------------------------------------------------------------------

action_ok(r) if count(r.actions) == 0

action_ok(r) if action in r.actions

# A URL prefix: scheme, host and port exact, the path under the prefix's on a segment boundary (`under` is
# the prefix ending in `/`, computed with the data).
pattern_matches(p) if startswith(destination, p.under)

pattern_matches(p) if destination == p.prefix

# `*.example.com`: HTTPS to exactly one more label (no port unless the pattern names it).
pattern_matches(p) if {
	url_parts[0] == "https:"
	url_parts[1] == ""
	endswith(url_parts[2], p.host_suffix)
	label := trim_suffix(url_parts[2], p.host_suffix)
	label != ""
	not contains(label, ".")
}

# A bare host: HTTPS to that host, any path.
pattern_matches(p) if {
	url_parts[0] == "https:"
	url_parts[1] == ""
	url_parts[2] == p.host
}

destination_ok(r) if {
	some p in r.destinations
	pattern_matches(p)
}

failure(r) := "grant-not-active" if {
	not r.active
} else := "action-not-granted" if {
	not action_ok(r)
} else := "destination-not-granted" if {
	not destination_ok(r)
} else := "sensitivity-too-high" if {
	sensitivity_rank[sensitivity] > sensitivity_rank[r.max_sensitivity]
} else := "none"

allowing contains r.grant if {
	some r in rules
	failure(r) == "none"
}

closest := reason if {
	failures := {f | some r in rules; f := failure(r); f != "none"}
	furthest := max({stage[f] | some f in failures})
	some reason in failures
	stage[reason] == furthest
}

# --- The decision ------------------------------------------------------------------------------------------

deny_reason := "unauthenticated" if {
	not caller
} else := "agent-suspended" if {
	agent.suspended
} else := "agent-not-ready" if {
	not agent.ready
} else := "no-grant-for-tool" if {
	not rules
} else := closest

# Grants are tried in name order in agentid: the first allowing one is named.
grant := min(allowing) if count(allowing) > 0

allow if count(allowing) > 0

# The plugin's answer (the object form of `plugins.envoy_ext_authz_grpc.path`).
result := {
	"allowed": true,
	"request_headers_to_remove": ["authorization"],
	"dynamic_metadata": {"decision": "allow", "reason": "", "grant": grant},
} if allow

result := {
	"allowed": false,
	"http_status": deny_status,
	"headers": {"x-agentid-reason": deny_reason, "content-type": "application/json"},
	"body": json.marshal({"decision": false, "reasons": [deny_reason]}),
	"dynamic_metadata": {"decision": "deny", "reason": deny_reason},
} if not allow

deny_status := 401 if {
	deny_reason == "unauthenticated"
} else := 403
