//! ToolGrant controller: keeps each grant's phase, status and RBAC (a Role and
//! RoleBinding for its agent's ServiceAccount while Active) in line, and wakes up
//! at the grant's validity boundaries.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::{info, instrument};

use super::{Action, Context, Key, delete_exactly};
use crate::api::{AgentIdentity, FIELD_MANAGER, ToolGrant};
use crate::core::grant::{self, ExistingRbac, RbacAction};
use crate::core::identity::is_owned_by;
use crate::error::Result;

const KIND: &str = "ToolGrant";

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>) {
    // Roles and RoleBindings: someone else's change or deletion of one wakes its grant.
    let children = vec![super::children::<ToolGrant, Role>(&ctx), super::children::<ToolGrant, RoleBinding>(&ctx)];
    let agent_ref: fn(&ToolGrant) -> &str = |g| g.spec.agent_ref.name.as_str();
    let triggers = super::agent_dependents(&ctx, ctx.grant_deadlines.clone(), agent_ref, children);
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
