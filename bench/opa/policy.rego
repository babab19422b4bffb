# The decision agentid's decision point makes, written in Rego for Open Policy Agent, so that the two can be
# measured side by side on the same grants (`make bench-pdp`, benches/pdp_load.rs).
#
# How it was written, and why it is a fair peer
# ----------------------------------------------
# As a competent OPA user would write an API-authorization policy for this problem, not as a straw man:
#
# - Data is indexed the way lookups happen: `data.grants[namespace][agent][tool]` is the short list of grant
#   entries of that agent for that tool (agentid's Snapshot has the same index), so evaluation never scans
#   the 20,000 grants. ServiceAccounts and agents are looked up by key too. Destination patterns are
#   pre-parsed when the data is generated (normalised URL prefixes; `*.example.com` becomes a host
#   suffix), as one would do in a bundle build, instead of being parsed on every query. OPA runs with
#   `--optimize-store-for-read-speed` (data kept as AST values), as its performance guide advises for
#   read-heavy policies.
# - The caller's ServiceAccount token is verified in Rego with `io.jwt.decode_verify` against the issuer's
#   JWKS (kept as a string in data, which OPA parses once and caches), checking issuer, audience and
#   expiry, as agentid does. agentid remembers a verified token until it expires (the revocable bindings —
#   ServiceAccount uid, agent, task anchor — are still looked up on every call), so OPA's own cache of
#   verified tokens (`io_jwt`, off by default) is turned on in the bench (`--set caching.…io_jwt…`).
# - The same checks, in the same order, with the same reason codes: the token (unauthenticated), the
#   ServiceAccount being the one created for the agent (uid), the agent (uid, not suspended, Ready), a
#   grant for the tool, then per grant: in force, action (none listed = all), destination (URL prefix with
#   scheme, host and port exact and the path on a segment boundary; host glob = exactly one more label,
#   HTTPS only), sensitivity (ordered; a request naming none is judged at `internal`). Allowed if any grant
#   allows; otherwise the reason of the grant that got furthest.
# - Decision logs are off in OPA (its default) and agentid's decision log has no subscriber in the load
#   bench; the bench measures agentid's log separately, in process.
#
# What this policy does not do (so OPA is, if anything, favoured):
# - no URL normalisation or refusal of ambiguous URLs (userinfo, encoded `/`, `..`, backslashes, default
#   ports...): agentid parses and normalises every destination; here the query and fragment are cut off
#   and the rest compared as a string. For the normalised URLs the bench sends, both decide the same.
# - no CEL `when`, no per-task or per-minute limits, no task tokens, no approval: the bench's grants use
#   none of them, and OPA has no stateful counters to build limits from.
# - no decision id, explanation or metrics per decision.
#
# `verify_token`: `data.config.verify_token` (true), overridable per query by `input.verify_token` so the
# bench can report OPA's cost without signature verification too (the token is then only decoded). A
# benchmark knob only: a real deployment must not let the caller turn verification off. agentid has no
# such switch; it always verifies.
#
# Input (AuthZEN-shaped, with the bearer token, since OPA's REST API does not see request headers):
#   {"token": "<jwt>", "verify_token": true,
#    "action": {"name": "read"},
#    "resource": {"type": "tool", "id": "tool-7", "properties": {"destination": "https://...", "sensitivity": "internal"}}}
# Output (`POST /v1/data/agentid/decision`): {"allow": bool, "reasons": [...], "grant": "<name>"}.
package agentid

sensitivity_rank := {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}

# How far a grant got before failing: the deny reason is that of the furthest (as in agentid).
stage := {"grant-not-active": 0, "action-not-granted": 1, "destination-not-granted": 2, "sensitivity-too-high": 3}

verify := object.get(input, "verify_token", data.config.verify_token)

# --- Who is asking -----------------------------------------------------------------------------------------

claims := payload if {
	verify
	[valid, _, payload] := io.jwt.decode_verify(input.token, {
		"cert": data.config.jwks,
		"iss": data.config.issuer,
		"aud": data.config.audience,
	})
	valid
}

claims := payload if {
	not verify
	[_, payload, _] := io.jwt.decode(input.token)
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

sensitivity := object.get(input.resource, ["properties", "sensitivity"], data.config.default_sensitivity)

# The destination without query and fragment (they never take part in matching), and its host.
destination := split(split(input.resource.properties.destination, "#")[0], "?")[0]

url_parts := split(destination, "/") # ["https:", "", "host[:port]", "path"...]

rules := data.grants[caller.namespace][caller.agent][input.resource.id]

# --- One grant entry ---------------------------------------------------------------------------------------

action_ok(r) if count(r.actions) == 0

action_ok(r) if input.action.name in r.actions

# A URL prefix: scheme, host and port exact, the path under the prefix's on a segment boundary. `under` is
# the prefix ending in `/` (computed with the data): `https://h/api` covers `https://h/api` and what lies
# under `https://h/api/`, never `https://h/apix`.
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
	not input.resource.properties.destination
	count(r.destinations) == 0
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
decision := {"allow": true, "reasons": [], "grant": min(allowing)} if count(allowing) > 0

decision := {"allow": false, "reasons": [deny_reason]} if count(allowing) == 0
