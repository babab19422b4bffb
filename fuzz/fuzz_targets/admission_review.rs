//! The admission webhook's input: an AdmissionReview body, parsed and judged as each of the three
//! admission endpoints would (workloads in every enforcement mode, ToolGrants, agentid objects).
#![no_main]

use agentid::api::{AgentIdentity, ToolGrant};
use agentid::core::admission::workload::from_object;
use agentid::core::admission::{Enforcement, grants, identities, review};
use agentid_fuzz::{DIRECTORY, EXCEPTIONS, now};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = review::parse(data) else { return };
    let use_check = review::agent_use_check(&req, &*DIRECTORY);
    let denied = use_check.as_ref().map(|c| {
        let _ = c.attributes();
        c.agent.as_str()
    });
    for mode in [Enforcement::Enforce, Enforcement::Warn, Enforcement::Audit] {
        let j = review::judge_with(&req, mode, &*DIRECTORY, &EXCEPTIONS, now(), denied);
        let _ = serde_json::to_vec(&review::respond(j.response));
    }
    if let Some(Ok(Some(w))) = req.object.as_ref().map(from_object) {
        let _ = review::deny_message(&w, &[]);
    }
    // The ToolGrant escalation check and the agentid-object check (pure parts of the handlers).
    if let Some(o) = &req.object {
        if let Ok(grant) = serde_json::from_value::<ToolGrant>(o.clone()) {
            let old = req.old_object.as_ref().and_then(|o| serde_json::from_value::<ToolGrant>(o.clone()).ok());
            let _ = grants::review_request(
                &req.user_info,
                &req.operation,
                req.namespace.as_deref(),
                &grant,
                old.as_ref(),
                &*DIRECTORY,
            );
        }
        let identity = serde_json::from_value::<AgentIdentity>(o.clone()).ok();
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
