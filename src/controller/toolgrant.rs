//! ToolGrant controller: keeps each grant's phase, status and RBAC (a Role and
//! RoleBinding for its agent's ServiceAccount while Active) in line, and wakes up
//! at the grant's validity boundaries.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, instrument};

use super::{Action, Context, Key, delete_exactly};
use crate::api::{AgentIdentity, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, ToolGrant};
use crate::core::grant::{self, ExistingRbac, RbacAction};
use crate::core::identity::is_owned_by;
use crate::error::Result;

const KIND: &str = "ToolGrant";

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let grants: Api<ToolGrant> = ctx.config.api(client.clone());
    let agents: Api<AgentIdentity> = ctx.config.api(client.clone());
    let roles: Api<PartialObjectMeta<Role>> = ctx.config.api(client.clone());
    let bindings: Api<PartialObjectMeta<RoleBinding>> = ctx.config.api(client);
    // Roles and RoleBindings: metadata only, and only someone else's change or deletion wakes their grant.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let role_changes = super::Changes::of_children()
        .filter(watcher::watcher(roles, owned.clone()).backoff(crate::controller::watch_backoff()));
    let binding_changes = super::Changes::of_children()
        .filter(watcher::watcher(bindings, owned).backoff(crate::controller::watch_backoff()));
    // An agent that appears, goes, is suspended or resumed, or whose ServiceAccount comes into place changes
    // the phase of its grants; nothing else of it does (its conditions' times and messages, its finalizer).
    let agent_changes = super::Changes::new(crate::core::identity::dependents_fingerprint, true)
        .filter(watcher::watcher(agents, watcher::Config::default()).backoff(crate::controller::watch_backoff()));
    let index = Arc::new(Mutex::new(super::AgentRefIndex::default()));
    let observed = index.clone();
    let deadlines = ctx.grant_deadlines.clone();
    let own = super::main_stream(grants, move |e| {
        observed.lock().unwrap_or_else(|p| p.into_inner()).observe(e, |g: &ToolGrant| g.spec.agent_ref.name.as_str());
        deadlines.observe(e);
    });
    let triggers = futures::stream::select_all([
        own.boxed(),
        super::owners_of::<ToolGrant, _>(role_changes).boxed(),
        super::owners_of::<ToolGrant, _>(binding_changes).boxed(),
        super::AgentRefIndex::triggers(index, agent_changes).boxed(),
        super::deadlines::due(ctx.grant_deadlines.clone()).boxed(),
    ]);
    super::run(KIND, ctx, triggers, reconcile).await;
}

#[instrument(skip_all, fields(namespace = %key.namespace, name = %key.name))]
pub async fn reconcile(key: Key, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile_key(&ctx, KIND, &key, |o| apply(o, &ctx), |o| cleanup(o, &ctx)).await
}

async fn apply(grant: Arc<ToolGrant>, ctx: &Context) -> Result<Action> {
    let ns = grant.namespace().unwrap_or_default();
    let agents: Api<AgentIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let rbac_name = grant::rbac_name(&grant.name_any());
    // fetch
    let agent = agents.get_opt(&grant.spec.agent_ref.name).await?;
    let role = roles.get_opt(&rbac_name).await?;
    let binding = bindings.get_opt(&rbac_name).await?;
    // decide
    let existing = ExistingRbac { role: role.as_ref(), binding: binding.as_ref() };
    let plan = grant::plan(&grant, agent.as_ref(), existing, Timestamp::now())?;
    // apply
    match &plan.rbac {
        RbacAction::Keep => {}
        RbacAction::Apply { role, binding } => {
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            roles.patch(&plan.rbac_name, &pp, &Patch::Apply(role.as_ref())).await?;
            bindings.patch(&plan.rbac_name, &pp, &Patch::Apply(binding.as_ref())).await?;
            info!(rbac = %plan.rbac_name, "role and role binding applied");
        }
        RbacAction::Delete { role: delete_role, binding: delete_binding } => {
            // The binding first: access ends with it.
            if *delete_binding && let Some(b) = &binding {
                delete_exactly(&bindings, b).await?;
                info!(rbac = %plan.rbac_name, phase = ?plan.phase, "role binding deleted");
            }
            if *delete_role && let Some(r) = &role {
                delete_exactly(&roles, r).await?;
                info!(rbac = %plan.rbac_name, phase = ?plan.phase, "role deleted");
            }
        }
    }
    // status (only when it changed, so steady state costs no writes)
    ctx.write_status(grant.as_ref(), grant.status.as_ref(), &plan.status, &plan.events).await?;
    ctx.audit(crate::core::audit::lifecycle::grant_transition(
        grant.status.as_ref().and_then(|s| s.phase),
        plan.status.phase,
        &grant.namespace().unwrap_or_default(),
        &grant.name_any(),
        &grant.spec.agent_ref.name,
    ));
    for e in &plan.events {
        ctx.metrics.grant_transition(e.reason);
    }
    // Its phase changes by the passing of time alone at this instant: look again then (every other input is
    // watched, so nothing else is scheduled).
    if let Some(at) = plan.next_boundary {
        ctx.grant_deadlines.at(&ns, &grant.name_any(), at);
    }
    Ok(plan.retry_after.map_or_else(Action::await_change, Action::requeue))
}

/// Removes the grant's Role and RoleBinding; never objects of that name it does not own.
async fn cleanup(grant: Arc<ToolGrant>, ctx: &Context) -> Result<()> {
    let ns = grant.namespace().unwrap_or_default();
    let uid = grant.uid().unwrap_or_default();
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let rbac_name = grant::rbac_name(&grant.name_any());
    if let Some(b) = bindings.get_opt(&rbac_name).await?
        && is_owned_by(&b.metadata, &uid)
    {
        delete_exactly(&bindings, &b).await?;
        info!(rbac = %rbac_name, "role binding deleted");
    }
    if let Some(r) = roles.get_opt(&rbac_name).await?
        && is_owned_by(&r.metadata, &uid)
    {
        delete_exactly(&roles, &r).await?;
        info!(rbac = %rbac_name, "role deleted");
    }
    Ok(())
}
