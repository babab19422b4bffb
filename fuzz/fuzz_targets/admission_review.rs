//! The admission webhook's input: an AdmissionReview body, parsed and judged as each of the three
//! admission endpoints would (workloads in every enforcement mode, ToolGrants, agentid objects).
#![no_main]

use agentid::api::{AgentIdentity, ToolGrant};
use agentid::core::admission::workload::{from_json, from_object};
use agentid::core::admission::{Enforcement, grants, identities, review};
use agentid_fuzz::{DIRECTORY, EXCEPTIONS, now};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = review::parse(data) else { return };
    let workloads = review::Workloads::of(&req);
    let use_check = review::agent_use_check(&req, &workloads, &*DIRECTORY);
    let denied = use_check.as_ref().map(|c| {
        let _ = c.attributes();
        c.agent.as_str()
    });
    for mode in [Enforcement::Enforce, Enforcement::Warn, Enforcement::Audit] {
        let j = review::judge_with(&req, workloads.clone(), mode, &*DIRECTORY, &EXCEPTIONS, now(), denied);
        let _ = serde_json::to_vec(&review::respond(j.response));
    }
    // The webhook's fast decode answers as the general one does, errors included.
    if let Some(o) = &req.object {
        let fast = from_json(o.get());
        // (Not a Value: nested deeper than serde_json's recursion limit.)
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(o.get()) {
            assert_eq!(fast, from_object(&value), "from_json and from_object disagree");
        }
        if let Ok(Some(w)) = fast {
            let _ = review::deny_message(&w, &[]);
        }
    }
    // The ToolGrant escalation check and the agentid-object check (pure parts of the handlers).
    if let Some(o) = &req.object {
        if let Ok(grant) = serde_json::from_str::<ToolGrant>(o.get()) {
            let old = req.old_object.as_ref().and_then(|o| serde_json::from_str::<ToolGrant>(o.get()).ok());
            let _ = grants::review_request(
                &req.user_info,
                &req.operation,
                req.namespace.as_deref(),
                &grant,
                old.as_ref(),
                &*DIRECTORY,
            );
        }
        let identity = serde_json::from_str::<AgentIdentity>(o.get()).ok();
        let _ = identities::review_request(
            &req.user_info,
            &req.operation,
            &req.kind.kind,
            req.sub_resource.as_deref(),
            req.namespace.as_deref().unwrap_or_default(),
            identity.as_ref(),
            &*DIRECTORY,
        );
    }
});
