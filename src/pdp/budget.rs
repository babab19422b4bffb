//! The shell of [`crate::core::pdp::budget`]: slices of per-task limits this replica holds, claimed in
//! the AgentTask's status when it runs out, and its use reported back on a timer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::{debug, warn};

use crate::api::{AgentTask, ReplicaUsage};
use crate::core::pdp::budget::{self, Need};

type Key = (String, String, String);

/// Budget slices held by this replica.
pub struct Budgets {
    /// `None`: a single process keeps its claims in memory (tests, benchmarks, `agentid decide`).
    client: Option<Client>,
    replica: String,
    held: Mutex<HashMap<Key, u64>>,
    used: Mutex<HashMap<Key, (u64, bool)>>,
    /// Claims in memory when there is no client.
    local_claims: Mutex<HashMap<Key, u64>>,
    claiming: tokio::sync::Mutex<()>,
}

impl Budgets {
    pub fn new(client: Client, replica: &str) -> Self {
        Self::with(Some(client), replica)
    }

    pub fn local() -> Self {
        Self::with(None, "local")
    }

    fn with(client: Option<Client>, replica: &str) -> Self {
        Budgets {
            client,
            replica: replica.to_string(),
            held: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
            local_claims: Mutex::new(HashMap::new()),
            claiming: tokio::sync::Mutex::new(()),
        }
    }

    fn key(namespace: &str, n: &Need) -> Key {
        (namespace.to_string(), n.task.clone(), n.key.clone())
    }

    /// Spends one unit of every need, or none: `Err` says which limit is spent.
    fn try_spend(&self, namespace: &str, needs: &[Need]) -> Result<(), Vec<Need>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let lacking: Vec<Need> =
            needs.iter().filter(|n| held.get(&Self::key(namespace, n)).copied().unwrap_or(0) == 0).cloned().collect();
        if !lacking.is_empty() {
            return Err(lacking);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        for n in needs {
            let k = Self::key(namespace, n);
            if let Some(h) = held.get_mut(&k) {
                *h -= 1;
            }
            let u = used.entry(k).or_default();
            u.0 += 1;
            u.1 = true;
        }
        Ok(())
    }

    /// Spends one unit of each of `needs` for an allowed call, claiming a new slice where this replica
    /// holds none. `Err` explains which limit is reached.
    pub async fn spend(&self, namespace: &str, needs: &[Need]) -> Result<(), String> {
        if needs.is_empty() {
            return Ok(());
        }
        let lacking = match self.try_spend(namespace, needs) {
            Ok(()) => return Ok(()),
            Err(l) => l,
        };
        let _claiming = self.claiming.lock().await;
        for n in &lacking {
            if self.held.lock().unwrap_or_else(|p| p.into_inner()).get(&Self::key(namespace, n)).copied().unwrap_or(0)
                > 0
            {
                continue;
            }
            let slice = self.claim(namespace, n).await?;
            *self.held.lock().unwrap_or_else(|p| p.into_inner()).entry(Self::key(namespace, n)).or_default() += slice;
        }
        self.try_spend(namespace, needs).map_err(|l| exhausted(&l))
    }

    async fn claim(&self, namespace: &str, n: &Need) -> Result<u64, String> {
        let Some(client) = &self.client else {
            let mut claims = self.local_claims.lock().unwrap_or_else(|p| p.into_inner());
            let c = claims.entry(Self::key(namespace, n)).or_default();
            let mut usage = std::collections::BTreeMap::new();
            usage.insert(
                self.replica.clone(),
                ReplicaUsage { claimed: [(n.key.clone(), *c as i64)].into(), used: Default::default() },
            );
            let slice =
                budget::next_slice(&usage, &n.key, n.limit).ok_or_else(|| exhausted(std::slice::from_ref(n)))?;
            *c += slice;
            return Ok(slice);
        };
        let api: Api<AgentTask> = Api::namespaced(client.clone(), namespace);
        for _ in 0..20 {
            let task = api
                .get_status(&n.task)
                .await
                .map_err(|e| format!("could not read AgentTask {namespace}/{}: {e}", n.task))?;
            let usage = task.status.map(|s| s.usage).unwrap_or_default();
            let rv = task.metadata.resource_version.unwrap_or_default();
            let slice =
                budget::next_slice(&usage, &n.key, n.limit).ok_or_else(|| exhausted(std::slice::from_ref(n)))?;
            let patch = budget::claim_patch(&usage, &self.replica, &n.key, slice, &rv);
            match api.patch_status(&n.task, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    debug!(namespace, task = %n.task, key = %n.key, slice, "budget slice claimed");
                    return Ok(slice);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(format!("could not claim calls of AgentTask {namespace}/{}: {e}", n.task)),
            }
        }
        Err(format!("could not claim calls of AgentTask {namespace}/{}: too much contention; try again", n.task))
    }

    /// Writes the calls this replica allowed into each task's status (its own entry only).
    pub async fn report(&self) {
        let Some(client) = &self.client else { return };
        let dirty: Vec<(Key, u64)> = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.iter_mut()
                .filter(|(_, (_, d))| *d)
                .map(|(k, (n, d))| {
                    *d = false;
                    (k.clone(), *n)
                })
                .collect()
        };
        let mut by_task: HashMap<(String, String), serde_json::Map<String, serde_json::Value>> = HashMap::new();
        for ((ns, task, key), n) in dirty {
            by_task.entry((ns, task)).or_default().insert(key, n.into());
        }
        for ((ns, task), used) in by_task {
            let patch = serde_json::json!({"status": {"usage": {self.replica.clone(): {"used": used}}}});
            let api: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = api.patch_status(&task, &PatchParams::default(), &Patch::Merge(&patch)).await {
                debug!(namespace = %ns, task, error = %e, "could not report task usage");
            }
        }
    }

    /// Reports every `interval` until the process ends.
    pub async fn report_periodically(self: std::sync::Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.report().await;
        }
    }

    /// Forgets a task that ended (after a last report).
    pub fn forget(&self, namespace: &str, task: &str) {
        let keep = |k: &Key| !(k.0 == namespace && k.1 == task);
        self.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
        self.local_claims.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
        if self.client.is_none() {
            self.used.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
        }
    }
}

fn exhausted(needs: &[Need]) -> String {
    match needs.first() {
        Some(n) if n.key == budget::TASK_KEY => {
            format!("task {} has made its {} tool calls (sessionLimits.maxToolCalls)", n.task, n.limit)
        }
        Some(n) => format!(
            "task {} has made its {} calls under {} (limits.maxCallsPerSession)",
            n.task,
            n.limit,
            n.key.trim_start_matches("grant/")
        ),
        None => {
            warn!("budget exhausted without a need");
            "limit reached".into()
        }
    }
}
