//! AgentIdentity controller: keeps each agent's dedicated ServiceAccount and status in line.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::{info, instrument, warn};

use super::{Action, Context, Key};
use crate::api::{AgentIdentity, FIELD_MANAGER};
use crate::core::identity::{self, ServiceAccountAction, is_owned_by};
use crate::error::Result;

/// Finalizer that lets agentid remove what it created before an AgentIdentity goes.
pub use super::FINALIZER;
const KIND: &str = "AgentIdentity";

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>) {
    let agents: Api<AgentIdentity> = ctx.config.api(ctx.client.clone());
    // ServiceAccounts: someone else's change or deletion of one wakes its agent.
    let triggers = futures::stream::select(
        super::main_stream(agents, |_| {}),
        super::children::<AgentIdentity, ServiceAccount>(&ctx),
    );
    super::run(KIND, ctx, triggers, reconcile).await;
}

#[instrument(skip_all, fields(namespace = %key.namespace, name = %key.name))]
pub async fn reconcile(key: Key, ctx: Arc<Context>) -> Result<Action> {
    super::reconcile_key(&ctx, KIND, &key, |o| apply(o, &ctx), |o| cleanup(o, &ctx)).await
}

async fn apply(agent: Arc<AgentIdentity>, ctx: &Context) -> Result<Action> {
    let ns = agent.namespace().unwrap_or_default();
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    // fetch
    let existing = sa_api.get_opt(&agent.service_account_name()).await?;
    // decide
    let plan = identity::plan(&agent, existing.as_ref(), &ctx.config.trust_domain, Timestamp::now())?;
    // apply
    // Every input of the plan is watched (the agent, and the ServiceAccounts agentid labelled as its own, whose
    // change, deletion or loss of the label wakes the agent), so a settled agent waits for a change: no periodic
    // resync, which would hold a timer entry per agent in the controller's queue (about 0.5 KB each).
    let mut next = Action::await_change();
    match &plan.service_account {
        ServiceAccountAction::Keep => {}
        ServiceAccountAction::Apply { desired, create } => {
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            sa_api.patch(&plan.service_account_name, &pp, &Patch::Apply(desired)).await?;
            info!(service_account = %plan.service_account_name, created = create, "service account applied");
        }
        ServiceAccountAction::Conflict { .. } => {
            warn!(service_account = %plan.service_account_name, "service account conflict");
            // A foreign ServiceAccount triggers no watch event of ours: look again later.
            next = Action::requeue(Duration::from_secs(60));
        }
    }
    // status (only when it changed, so steady state costs no writes)
    ctx.write_status(agent.as_ref(), agent.status.as_ref(), &plan.status, &plan.events).await?;
    let suspended = |conds: &[_]| crate::core::conditions::is_true(conds, crate::core::conditions::SUSPENDED);
    ctx.audit(crate::core::audit::lifecycle::agent_transition(
        agent.status.as_ref().map(|s| suspended(&s.conditions)),
        suspended(&plan.status.conditions),
        &ns,
        &agent.name_any(),
    ));
    Ok(next)
}

/// Removes what agentid created for the agent; never anything it does not own.
async fn cleanup(agent: Arc<AgentIdentity>, ctx: &Context) -> Result<()> {
    let ns = agent.namespace().unwrap_or_default();
    let uid = agent.uid().unwrap_or_default();
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let sa_name = agent.service_account_name();
    if let Some(sa) = sa_api.get_opt(&sa_name).await?
        && is_owned_by(&sa.metadata, &uid)
    {
        super::delete_exactly(&sa_api, &sa).await?;
        info!(service_account = %sa_name, "service account deleted");
    }
    Ok(())
}
