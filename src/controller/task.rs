//! AgentTask controller: keeps each task's phase, status and anchor Secret in
//! line. The anchor exists while the task is Active; deleting it (task
//! completed, expired, agent suspended, task deleted) revokes every token
//! issued for the task. Wakes up at the task's expiry.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use tracing::{info, instrument, warn};

use super::{Action, Context, Key, delete_exactly};
use crate::api::{AgentIdentity, AgentTask, FIELD_MANAGER};
use crate::core::identity::is_owned_by;
use crate::core::task::{self, AnchorAction, Revocation};
use crate::error::Result;

const KIND: &str = "AgentTask";

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>) {
    // Anchors: someone else's change or deletion of one wakes its task.
    let children = vec![super::children::<AgentTask, Secret>(&ctx)];
    let agent_ref: fn(&AgentTask) -> &str = |t| t.spec.agent_ref.name.as_str();
    let triggers = super::agent_dependents(&ctx, ctx.task_deadlines.clone(), agent_ref, children);
    super::run(KIND, ctx, triggers, reconcile).await;
}

#[instrument(skip_all, fields(namespace = %key.namespace, name = %key.name))]
pub async fn reconcile(key: Key, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile_key(&ctx, KIND, &key, |o| apply(o, &ctx), |o| cleanup(o, &ctx)).await
}

async fn apply(task: Arc<AgentTask>, ctx: &Context) -> Result<Action> {
    let ns = task.namespace().unwrap_or_default();
    let agents: Api<AgentIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let anchor_name = task::anchor_name(&task.name_any());
    // fetch
    let agent = agents.get_opt(&task.spec.agent_ref.name).await?;
    let anchor = secrets.get_opt(&anchor_name).await?;
    // decide
    let now = Timestamp::now();
    let mut plan = task::plan(&task, agent.as_ref(), anchor.as_ref(), now)?;
    // apply
    match &plan.anchor {
        AnchorAction::Keep => {}
        AnchorAction::Apply(desired) => {
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PostParams::default() };
            let anchor = match secrets.create(&pp, desired).await {
                Ok(created) => {
                    info!(anchor = %plan.anchor_name, "anchor created");
                    Some(created)
                }
                // Created meanwhile (by an earlier reconcile, or by someone else): decide again on what is there,
                // which never touches a Secret that is not this task's.
                Err(kube::Error::Api(s)) if s.code == 409 => secrets.get_opt(&anchor_name).await?,
                Err(e) => return Err(e.into()),
            };
            // The created anchor dates the activation; a foreign one makes the task Pending (AnchorConflict).
            plan = task::plan(&task, agent.as_ref(), anchor.as_ref(), now)?;
            if matches!(plan.anchor, AnchorAction::Apply(_)) {
                // Gone again between create and get: try once more soon, with nothing written.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
        }
        AnchorAction::Delete(reason) => {
            if let Some(a) = &anchor {
                revoke(&secrets, a, *reason, ctx).await?;
            }
        }
    }
    if plan.reason == task::reason::ANCHOR_CONFLICT {
        warn!(anchor = %plan.anchor_name, "a Secret of the anchor's name is not this task's");
    }
    // status (only when it changed, so steady state costs no writes)
    ctx.write_status(task.as_ref(), task.status.as_ref(), &plan.status, &plan.events).await?;
    ctx.audit(crate::core::audit::lifecycle::task_transition(
        task.status.as_ref().and_then(|s| s.phase),
        plan.status.phase,
        &ns,
        &task.name_any(),
        &task.spec.agent_ref.name,
        plan.reason,
    ));
    // Its phase changes by the passing of time alone at this instant: look again then (every other input is
    // watched, so nothing else is scheduled).
    if let Some(at) = plan.wake_at {
        ctx.task_deadlines.at(&ns, &task.name_any(), at);
    }
    Ok(plan.retry_after.map_or_else(Action::await_change, Action::requeue))
}

/// Deletes the task's own anchor (exactly the fetched one) and counts the revocation.
async fn revoke(secrets: &Api<Secret>, anchor: &Secret, reason: Revocation, ctx: &Context) -> Result<()> {
    delete_exactly(secrets, anchor).await?;
    ctx.metrics.task_revoked(reason.as_str());
    info!(anchor = %anchor.name_any(), reason = reason.as_str(), "anchor deleted: the task's tokens are revoked");
    Ok(())
}

/// Removes the task's anchor, which revokes its tokens; never a Secret of that name it does not own.
async fn cleanup(task: Arc<AgentTask>, ctx: &Context) -> Result<()> {
    let ns = task.namespace().unwrap_or_default();
    let uid = task.uid().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(anchor) = secrets.get_opt(&task::anchor_name(&task.name_any())).await?
        && is_owned_by(&anchor.metadata, &uid)
    {
        revoke(&secrets, &anchor, Revocation::Deleted, ctx).await?;
    }
    Ok(())
}
