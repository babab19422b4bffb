//! The audit-trail writer, the shell around [`crate::core::audit`]: one append-only JSON-lines chain per
//! replica and start, written by one blocking task fed through a bounded channel.
//!
//! * [`AuditTrail::record`] is for must-record events (task tokens, approvals): it returns once the record
//!   is written (and, with the default fsync policy, on disk) and fails when it could not be, so the
//!   caller refuses the action — fail closed, like Vault's audit devices.
//! * [`AuditTrail::try_record`] is for decisions: it never waits; a full queue or a broken trail drops
//!   the record and counts it (`agentid_audit_records_dropped`).
//!
//! Segments rotate by size and keep the chain (a new segment's first `prev` is the previous segment's last
//! hash). Every N records or T seconds the writer signs a checkpoint, appends it to
//! `<chain>.checkpoints` and hands it to the anchor (an AuditCheckpoint object). See `docs/audit.md`.

pub mod ingest;
pub mod keys;
pub mod metrics;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::api::{AuditCheckpoint, AuditCheckpointSpec, audit_checkpoint_name};
use crate::core::audit::chain::{self, Chain};
use crate::core::audit::checkpoint::{self, Checkpoint};
use crate::core::audit::{Event, fingerprint};
pub use keys::AuditKeys;
pub use metrics::AuditMetrics;

/// Why the trail could not record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit trail in {0}")]
    Open(String),
    #[error("cannot write the audit trail: {0}")]
    Write(String),
    #[error("cannot sync the audit trail to disk: {0}")]
    Sync(String),
    #[error("the audit trail is not accepting records (it stopped, or a write failed and could not be undone)")]
    Closed,
    #[error("the audit trail did not accept the record within {0:?}")]
    Timeout(Duration),
    #[error("audit keys: {0}")]
    Key(String),
}

impl AuditError {
    /// Stable metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AuditError::Open(_) => "open",
            AuditError::Write(_) => "write_error",
            AuditError::Sync(_) => "sync_error",
            AuditError::Closed => "closed",
            AuditError::Timeout(_) => "timeout",
            AuditError::Key(_) => "key",
        }
    }
}

/// When the writer calls fsync (fdatasync) on the segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// After every batch of records.
    Always,
    #[default]
    /// Before acknowledging a batch holding a must-record event, at checkpoints and at rotation; decision
    /// records reach the disk with the next of those (or when the OS writes them back).
    MustRecord,
    /// Only at checkpoints and rotation.
    Never,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub replica: String,
    /// Rotate a segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// Sign a checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or this long after the last one, whichever comes first (if anything was written).
    pub checkpoint_interval: Duration,
    pub fsync: FsyncPolicy,
    /// Capacity of the queue in front of the writer.
    pub queue: usize,
    /// Also print every record to stdout (one JSON object per line, `"target":"agentid::audit"` first).
    pub stdout: bool,
    /// How long [`AuditTrail::record`] waits for room in the queue before failing.
    pub record_timeout: Duration,
}

impl AuditConfig {
    pub fn new(dir: impl Into<PathBuf>, replica: impl Into<String>) -> Self {
        AuditConfig {
            dir: dir.into(),
            replica: replica.into(),
            segment_bytes: 64 << 20,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            fsync: FsyncPolicy::MustRecord,
            queue: 65_536,
            stdout: false,
            record_timeout: Duration::from_secs(5),
        }
    }
}

/// The `agentid run` flags of the trail (flatten into `RunArgs` with `#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuditFlags {
    /// Directory of this replica's tamper-evident audit trail (hash-chained JSON lines). Without it nothing
    /// is recorded and task tokens are issued without a record.
    #[arg(long, env = "AGENTID_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Sign (and anchor) a checkpoint after this many records.
    #[arg(long, env = "AGENTID_AUDIT_CHECKPOINT_EVERY", default_value_t = 10_000)]
    pub audit_checkpoint_every: u64,
    /// ...or after this long, whichever comes first (a duration such as 60s or 5m).
    #[arg(long, env = "AGENTID_AUDIT_CHECKPOINT_INTERVAL", default_value = "60s")]
    pub audit_checkpoint_interval: String,
    /// Rotate a segment at this size (bytes); the chain continues in the next one.
    #[arg(long, env = "AGENTID_AUDIT_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub audit_segment_bytes: u64,
    /// When to fsync the trail (see docs/audit.md).
    #[arg(long, env = "AGENTID_AUDIT_FSYNC", value_enum, default_value = "must-record")]
    pub audit_fsync: FsyncPolicy,
    /// Also print every record to stdout as one JSON line (`"target":"agentid::audit"`), for log shippers.
    #[arg(long, env = "AGENTID_AUDIT_STDOUT")]
    pub audit_stdout: bool,
    /// Secret (in the operator namespace) holding the checkpoint signing key and the fingerprint key;
    /// created on first start.
    #[arg(long, env = "AGENTID_AUDIT_KEY_SECRET", default_value = keys::KEY_SECRET)]
    pub audit_key_secret: String,
    /// Do not anchor checkpoints as AuditCheckpoint objects (they are still written next to the trail).
    #[arg(long, env = "AGENTID_AUDIT_NO_ANCHOR")]
    pub audit_no_anchor: bool,
    /// Take the kube-apiserver's audit events (its webhook backend) at `/audit/apiserver` on the admission
    /// listener and record agents' own API calls. Needs --audit-dir and --webhook-client-ca-file (only the
    /// apiserver, with its client certificate, may post). See docs/audit.md.
    #[arg(long, env = "AGENTID_AUDIT_APISERVER_EVENTS")]
    pub audit_apiserver_events: bool,
}

/// Starts the trail `flags` describe (none without `--audit-dir`): keys from the Secret in `namespace`
/// (created when absent), checkpoints anchored as AuditCheckpoints in `namespace`.
pub async fn start(
    flags: &AuditFlags,
    client: Client,
    namespace: &str,
    replica: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<Arc<AuditTrail>>, AuditError> {
    let Some(dir) = &flags.audit_dir else { return Ok(None) };
    let interval = crate::api::duration::parse(&flags.audit_checkpoint_interval)
        .map_err(|e| AuditError::Open(format!("--audit-checkpoint-interval: {e}")))?;
    let keys = keys::load_or_create(client.clone(), namespace, &flags.audit_key_secret).await?;
    let mut config = AuditConfig::new(dir, replica);
    config.checkpoint_every = flags.audit_checkpoint_every.max(1);
    config.checkpoint_interval = interval;
    config.segment_bytes = flags.audit_segment_bytes.max(4096);
    config.fsync = flags.audit_fsync;
    config.stdout = flags.audit_stdout;
    let anchor = (!flags.audit_no_anchor).then(|| cluster_anchor(client, namespace.to_string()));
    let (trail, _writer) = AuditTrail::open(config, keys, anchor, Arc::new(metrics.audit.clone()))?;
    info!(public_key = %trail.public_key(), "audit checkpoints are signed with this key");
    Ok(Some(trail))
}

/// Hands a checkpoint to where it is anchored.
pub type AnchorFn = Arc<dyn Fn(Checkpoint) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How long the writer waits after a batch before parking on the queue again.
const LINGER: Duration = Duration::from_micros(200);

enum Cmd {
    Append(Box<Event>, Option<oneshot::Sender<Result<(), AuditError>>>),
    Tick,
    Checkpoint(oneshot::Sender<Result<Option<Checkpoint>, AuditError>>),
}

/// The trail: cheap to share (`Arc`), every method usable from any task.
pub struct AuditTrail {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<AuditMetrics>,
    fingerprint_key: ring::hmac::Key,
    chain: String,
    dir: PathBuf,
    public_key: String,
    record_timeout: Duration,
}

impl AuditTrail {
    /// Opens a new chain in `config.dir` and starts the writer (and the anchor, if given). Must be called
    /// within a tokio runtime. The writer stops, with a last checkpoint, once every handle is dropped.
    pub fn open(
        config: AuditConfig,
        keys: AuditKeys,
        anchor: Option<AnchorFn>,
        metrics: Arc<AuditMetrics>,
    ) -> Result<(Arc<AuditTrail>, tokio::task::JoinHandle<()>), AuditError> {
        let open_err = |e: std::io::Error| AuditError::Open(format!("{}: {e}", config.dir.display()));
        std::fs::create_dir_all(&config.dir).map_err(open_err)?;
        let mut random = [0u8; 2];
        let _ = SystemRandom::new().fill(&mut random);
        let chain_id = chain::chain_id(&config.replica, Timestamp::now().as_second(), u16::from_be_bytes(random));
        let segment = open_segment(&config.dir, &chain_id, 0).map_err(open_err)?;
        let cp_path = config.dir.join(format!("{chain_id}.checkpoints"));
        let cp_file = OpenOptions::new().create(true).append(true).open(&cp_path).map_err(open_err)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let anchor_tx = anchor.map(|a| spawn_anchor(a, metrics.clone()));
        let public_key = checkpoint::public_key_b64(&keys.signing);
        let trail = Arc::new(AuditTrail {
            tx: tx.clone(),
            metrics: metrics.clone(),
            fingerprint_key: keys.fingerprint.clone(),
            chain: chain_id.clone(),
            dir: config.dir.clone(),
            public_key,
            record_timeout: config.record_timeout,
        });
        // The ticker holds only a weak sender: it does not keep the writer alive.
        let weak = tx.downgrade();
        drop(tx);
        let interval = config.checkpoint_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { break };
                let _ = tx.try_send(Cmd::Tick);
            }
        });
        info!(chain = %chain_id, dir = %config.dir.display(), "audit trail open");
        let writer = Writer {
            chain: Chain::new(chain_id, config.replica.clone()),
            segment_index: 0,
            file: segment,
            file_len: 0,
            cp_file,
            since_checkpoint: 0,
            last_time: None,
            failed: false,
            ids: IdSource::default(),
            buf: Vec::with_capacity(1 << 16),
            keys,
            anchor_tx,
            metrics,
            config,
        };
        let handle = tokio::task::spawn_blocking(move || writer.run(rx));
        Ok((trail, handle))
    }

    /// Records a must-record event: `Ok` once it is written (and synced, per the fsync policy). On `Err`
    /// the caller must refuse the action the record is about.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let result = self.record_inner(event).await;
        if let Err(e) = &result {
            self.metrics.failed(e.label());
        }
        result
    }

    async fn record_inner(&self, event: Event) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        match tokio::time::timeout(self.record_timeout, self.tx.send(Cmd::Append(Box::new(event), Some(ack)))).await {
            Err(_) => return Err(AuditError::Timeout(self.record_timeout)),
            Ok(Err(_)) => return Err(AuditError::Closed),
            Ok(Ok(())) => {}
        }
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Records an event without waiting (decisions). Returns whether it was queued; a dropped record is
    /// counted.
    pub fn try_record(&self, event: Event) -> bool {
        match self.tx.try_send(Cmd::Append(Box::new(event), None)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped("queue_full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped("closed");
                false
            }
        }
    }

    /// Writes a checkpoint now (if anything was recorded since the last one) and returns it.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Cmd::Checkpoint(ack)).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// The trail's metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// A trail whose writer is gone: every record fails with `Closed` (tests of callers).
    #[cfg(test)]
    pub(crate) fn closed_for_tests() -> AuditTrail {
        let (tx, _) = mpsc::channel(1);
        AuditTrail {
            tx,
            metrics: Arc::new(AuditMetrics::default()),
            fingerprint_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k"),
            chain: "c".into(),
            dir: PathBuf::new(),
            public_key: String::new(),
            record_timeout: Duration::from_millis(50),
        }
    }

    /// A keyed fingerprint of a sensitive value, for the record's `credential` field.
    pub fn fingerprint(&self, value: &str) -> String {
        fingerprint(&self.fingerprint_key, value.as_bytes())
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoints' public key (base64), for `agentid audit verify --public-key`.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Path of segment `index` of this chain.
    pub fn segment_path(&self, index: u32) -> PathBuf {
        segment_path(&self.dir, &self.chain, index)
    }

    /// Path of this chain's checkpoints file.
    pub fn checkpoints_path(&self) -> PathBuf {
        self.dir.join(format!("{}.checkpoints", self.chain))
    }
}

fn segment_path(dir: &Path, chain: &str, index: u32) -> PathBuf {
    dir.join(format!("{chain}.{index:06}.jsonl"))
}

fn open_segment(dir: &Path, chain: &str, index: u32) -> std::io::Result<File> {
    OpenOptions::new().create_new(true).append(true).open(segment_path(dir, chain, index))
}

/// Random record ids, from a buffer refilled every 256 records.
struct IdSource {
    rng: SystemRandom,
    pool: Vec<u8>,
    counter: u64,
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource { rng: SystemRandom::new(), pool: Vec::new(), counter: 0 }
    }
}

impl IdSource {
    fn next(&mut self) -> String {
        if self.pool.len() < 16 {
            self.pool = vec![0u8; 16 * 256];
            if self.rng.fill(&mut self.pool).is_err() {
                // Never reused in one process even so: the counter and the clock make it unique.
                let seed = Timestamp::now().as_nanosecond().to_be_bytes();
                for (i, b) in self.pool.iter_mut().enumerate() {
                    *b = seed[i % 16] ^ (i as u8);
                }
            }
        }
        self.counter += 1;
        let at = self.pool.len() - 16;
        let mut id: [u8; 16] = self.pool[at..].try_into().unwrap_or([0; 16]);
        self.pool.truncate(at);
        for (b, c) in id[8..].iter_mut().zip(self.counter.to_be_bytes()) {
            *b ^= c;
        }
        chain::hex(&id)
    }
}

struct Writer {
    config: AuditConfig,
    keys: AuditKeys,
    chain: Chain,
    segment_index: u32,
    file: File,
    file_len: u64,
    cp_file: File,
    since_checkpoint: u64,
    last_time: Option<Timestamp>,
    /// A write failed and could not be undone: the chain on disk must not grow past the bad bytes.
    failed: bool,
    ids: IdSource,
    buf: Vec<u8>,
    anchor_tx: Option<mpsc::Sender<Checkpoint>>,
    metrics: Arc<AuditMetrics>,
}

/// Most commands handled in one batch (one write, at most one fsync).
const BATCH: usize = 4096;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut last_checkpoint = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let full = batch.len() == BATCH;
            self.handle(&mut batch, &mut last_checkpoint);
            // Linger a moment before waiting again: records that arrive meanwhile find the writer not
            // parked on the channel, so their senders pay no wake-up (a futex call each, as much as the
            // decision itself), and they are written together. Costs must-record callers at most this
            // long; skipped when the queue is already backed up.
            if !full {
                std::thread::sleep(LINGER);
            }
        }
        if self.since_checkpoint > 0 && !self.failed {
            let _ = self.checkpoint();
        }
    }

    fn now(&mut self) -> String {
        let mut t = Timestamp::now();
        if let Some(last) = self.last_time
            && t < last
        {
            t = last;
        }
        self.last_time = Some(t);
        format!("{t:.6}")
    }

    fn handle(&mut self, batch: &mut Vec<Cmd>, last_checkpoint: &mut Instant) {
        let mut acks = Vec::new();
        let mut checkpoint_acks = Vec::new();
        let mut tick = false;
        let mut count = 0u64;
        let before = self.chain.clone();
        self.buf.clear();
        // One time for the batch: its records are appended together.
        let time = self.now();
        for cmd in batch.drain(..) {
            match cmd {
                Cmd::Append(event, ack) => {
                    if self.failed {
                        match ack {
                            Some(a) => {
                                let _ = a.send(Err(AuditError::Closed));
                            }
                            None => self.metrics.dropped("failed"),
                        }
                        continue;
                    }
                    let id = self.ids.next();
                    self.chain.append(*event, id, time.clone(), &mut self.buf);
                    count += 1;
                    if let Some(a) = ack {
                        acks.push(a);
                    }
                }
                Cmd::Tick => tick = true,
                Cmd::Checkpoint(ack) => checkpoint_acks.push(ack),
            }
        }
        if count > 0 {
            let sync = match self.config.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::MustRecord => !acks.is_empty(),
                FsyncPolicy::Never => false,
            };
            match self.write_batch(sync) {
                Ok(()) => {
                    self.file_len += self.buf.len() as u64;
                    self.since_checkpoint += count;
                    self.metrics.written.inc_by(count);
                    if self.config.stdout {
                        export(&self.buf);
                    }
                    for a in acks {
                        let _ = a.send(Ok(()));
                    }
                }
                Err(e) => {
                    warn!(error = %e, chain = %self.chain.id, "audit trail write failed");
                    self.undo(before);
                    let must = acks.len() as u64;
                    for a in acks {
                        let _ = a.send(Err(e.clone()));
                    }
                    for _ in 0..count.saturating_sub(must) {
                        self.metrics.dropped(e.label());
                    }
                }
            }
        }
        let due = self.since_checkpoint >= self.config.checkpoint_every
            || (tick && last_checkpoint.elapsed() >= self.config.checkpoint_interval);
        let mut made = None;
        if (due || !checkpoint_acks.is_empty()) && self.since_checkpoint > 0 && !self.failed {
            match self.checkpoint() {
                Ok(cp) => {
                    *last_checkpoint = Instant::now();
                    made = Some(Ok(Some(cp)));
                }
                Err(e) => {
                    warn!(error = %e, chain = %self.chain.id, "audit checkpoint failed");
                    made = Some(Err(e));
                }
            }
        }
        for ack in checkpoint_acks {
            let _ = ack.send(made.clone().unwrap_or(if self.failed { Err(AuditError::Closed) } else { Ok(None) }));
        }
        if self.file_len >= self.config.segment_bytes && !self.failed {
            self.rotate();
        }
    }

    fn write_batch(&mut self, sync: bool) -> Result<(), AuditError> {
        self.file.write_all(&self.buf).map_err(|e| AuditError::Write(e.to_string()))?;
        if sync {
            self.file.sync_data().map_err(|e| AuditError::Sync(e.to_string()))?;
        }
        Ok(())
    }

    /// Takes back a failed batch: the file is cut back to its last good record and the chain rewound, so
    /// the next record links to the last one on disk. If the file cannot be cut back, the trail stops.
    fn undo(&mut self, before: Chain) {
        self.chain = before;
        if let Err(e) = self.file.set_len(self.file_len) {
            warn!(error = %e, "cannot cut the audit segment back after a failed write; the trail stops");
            self.failed = true;
        }
    }

    fn checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        let Some(seq) = self.chain.last_seq() else {
            return Err(AuditError::Closed);
        };
        // A checkpoint never covers records that are not on disk.
        self.file.sync_data().map_err(|e| AuditError::Sync(e.to_string()))?;
        let time = format!("{:.0}", Timestamp::now());
        let cp = checkpoint::sign(&self.keys.signing, &self.chain.id, seq, &self.chain.head, &time);
        let mut line = serde_json::to_vec(&cp).map_err(|e| AuditError::Write(e.to_string()))?;
        line.push(b'\n');
        self.cp_file.write_all(&line).map_err(|e| AuditError::Write(e.to_string()))?;
        self.cp_file.sync_data().map_err(|e| AuditError::Sync(e.to_string()))?;
        self.since_checkpoint = 0;
        self.metrics.checkpoint("signed");
        if let Some(tx) = &self.anchor_tx
            && tx.try_send(cp.clone()).is_err()
        {
            self.metrics.checkpoint("anchor_dropped");
        }
        Ok(cp)
    }

    fn rotate(&mut self) {
        if let Err(e) = self.file.sync_data() {
            warn!(error = %e, "audit segment sync before rotation failed");
        }
        let next = self.segment_index + 1;
        match open_segment(&self.config.dir, &self.chain.id, next) {
            Ok(f) => {
                self.file = f;
                self.file_len = 0;
                self.segment_index = next;
            }
            // Keep appending to the current segment; try again after the next batch.
            Err(e) => warn!(error = %e, "cannot open the next audit segment"),
        }
    }
}

/// The records of a batch on stdout, each as one JSON object with `"target":"agentid::audit"` first.
fn export(buf: &[u8]) {
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 8);
    for line in buf.split(|b| *b == b'\n').filter(|l| l.len() > 1) {
        out.extend_from_slice(br#"{"target":"agentid::audit","#);
        out.extend_from_slice(&line[1..]);
        out.push(b'\n');
    }
    let _ = std::io::stdout().lock().write_all(&out);
}

/// Anchors checkpoints in the background, retrying a few times; failures are counted (the local
/// checkpoints file still has them).
fn spawn_anchor(anchor: AnchorFn, metrics: Arc<AuditMetrics>) -> mpsc::Sender<Checkpoint> {
    let (tx, mut rx) = mpsc::channel::<Checkpoint>(1024);
    tokio::spawn(async move {
        while let Some(cp) = rx.recv().await {
            let mut delay = Duration::from_millis(200);
            let mut last_err = String::new();
            let mut ok = false;
            for _ in 0..5 {
                match anchor(cp.clone()).await {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        last_err = e;
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            if ok {
                metrics.checkpoint("anchored");
            } else {
                metrics.checkpoint("anchor_failed");
                warn!(chain = %cp.chain, seq = cp.seq, error = %last_err, "could not anchor an audit checkpoint");
            }
        }
    });
    tx
}

/// Anchors checkpoints as AuditCheckpoint objects in `namespace` (create-only; an object that already
/// exists for the same position counts as anchored).
pub fn cluster_anchor(client: Client, namespace: String) -> AnchorFn {
    Arc::new(move |cp: Checkpoint| {
        let api: Api<AuditCheckpoint> = Api::namespaced(client.clone(), &namespace);
        let namespace = namespace.clone();
        Box::pin(async move {
            let obj = AuditCheckpoint {
                metadata: ObjectMeta {
                    name: Some(audit_checkpoint_name(&cp.chain, cp.seq)),
                    namespace: Some(namespace),
                    labels: Some(
                        [(crate::api::MANAGED_BY_LABEL.to_string(), crate::api::MANAGED_BY.to_string())].into(),
                    ),
                    ..Default::default()
                },
                spec: AuditCheckpointSpec::from_checkpoint(&cp),
            };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::{Kind, Verifier, VerifyOptions};
    use prometheus_client::metrics::family::Family;

    fn keys() -> AuditKeys {
        AuditKeys::generate().unwrap().0
    }

    fn verify(dir: &Path, partial: bool) -> crate::core::audit::Report {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut v = Verifier::new(VerifyOptions { partial, trusted_key: None });
        for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "checkpoints")) {
            for (i, l) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
                v.add_checkpoint(&serde_json::from_str(l).unwrap(), &format!("{}:{}", f.display(), i + 1));
            }
        }
        for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "jsonl")) {
            v.begin_file(&f.display().to_string());
            for (i, l) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
                v.push(i as u64 + 1, l.as_bytes(), true);
            }
        }
        v.finish()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_rotate_checkpoint_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AuditConfig::new(dir.path(), "Replica.0");
        cfg.segment_bytes = 2_000;
        cfg.checkpoint_every = 7;
        let metrics = Arc::new(AuditMetrics::default());
        let anchored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = anchored.clone();
        let anchor: AnchorFn = Arc::new(move |cp| {
            sink.lock().unwrap().push(cp);
            Box::pin(async { Ok(()) })
        });
        let (trail, writer) = AuditTrail::open(cfg, keys(), Some(anchor), metrics.clone()).unwrap();
        assert!(trail.chain().starts_with("replica-0-"), "{}", trail.chain());
        for i in 0..40 {
            let mut e = Event::new(Kind::Decision);
            e.tool = Some(format!("tool-{i}"));
            if i % 10 == 0 {
                trail.record(e).await.unwrap();
            } else {
                assert!(trail.try_record(e));
            }
        }
        let cp = trail.checkpoint().await.unwrap().unwrap();
        assert_eq!(cp.seq, 39);
        assert!(trail.segment_path(1).exists(), "rotated by size");
        assert_eq!(metrics.written.get(), 40);
        let r = verify(dir.path(), false);
        assert!(r.intact(), "{r:?}");
        assert_eq!(r.records, 40);
        assert!(r.checkpoints_verified >= 2, "{r:?}");
        drop(trail);
        writer.await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(anchored.lock().unwrap().iter().any(|c| c.seq == 39));
    }

    #[tokio::test]
    async fn a_trail_that_cannot_write_refuses_must_records_and_counts_drops() {
        let metrics = Arc::new(AuditMetrics::default());
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let dead = AuditTrail {
            tx,
            metrics: metrics.clone(),
            fingerprint_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k"),
            chain: "c".into(),
            dir: PathBuf::new(),
            public_key: String::new(),
            record_timeout: Duration::from_millis(50),
        };
        assert_eq!(dead.record(Event::new(Kind::TaskTokenIssued)).await, Err(AuditError::Closed));
        assert!(!dead.try_record(Event::new(Kind::Decision)));
        let get = |f: &Family<crate::metrics::ReasonLabels, prometheus_client::metrics::counter::Counter>| {
            f.get_or_create(&crate::metrics::ReasonLabels { reason: "closed".into() }).get()
        };
        assert_eq!(get(&metrics.failures), 1);
        assert_eq!(get(&metrics.dropped), 1);

        // A full queue: must-records time out (and fail), decisions are dropped and counted.
        let (tx, _rx) = mpsc::channel(1);
        let full = AuditTrail { tx, ..dead };
        assert!(full.try_record(Event::new(Kind::Decision)));
        assert!(!full.try_record(Event::new(Kind::Decision)));
        assert!(matches!(full.record(Event::new(Kind::TaskTokenIssued)).await, Err(AuditError::Timeout(_))));
    }

    #[test]
    fn a_failed_write_is_undone_so_the_chain_stays_intact() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(AuditMetrics::default());
        let file = open_segment(dir.path(), "c", 0).unwrap();
        let cp_file = File::create(dir.path().join("c.checkpoints")).unwrap();
        let mut w = Writer {
            config: AuditConfig::new(dir.path(), "r"),
            keys: keys(),
            chain: Chain::new("c", "r"),
            segment_index: 0,
            file,
            file_len: 0,
            cp_file,
            since_checkpoint: 0,
            last_time: None,
            failed: false,
            ids: IdSource::default(),
            buf: Vec::new(),
            anchor_tx: None,
            metrics: metrics.clone(),
        };
        let mut last = Instant::now();
        let mut batch = vec![Cmd::Append(Box::new(Event::new(Kind::Decision)), None)];
        w.handle(&mut batch, &mut last);
        // Simulate a failed batch: the chain advanced in memory, then is undone.
        let before = w.chain.clone();
        let mut junk = Vec::new();
        w.chain.append(Event::new(Kind::Decision), "x".into(), "t".into(), &mut junk);
        w.file.write_all(&junk[..10]).unwrap();
        w.undo(before);
        let mut batch = vec![Cmd::Append(Box::new(Event::new(Kind::Decision)), None)];
        w.handle(&mut batch, &mut last);
        let r = verify(dir.path(), false);
        assert!(r.intact(), "{r:?}");
        assert_eq!(r.records, 2);
    }

    #[test]
    fn ids_are_unique() {
        let mut ids = IdSource::default();
        let set: std::collections::HashSet<String> = (0..2000).map(|_| ids.next()).collect();
        assert_eq!(set.len(), 2000);
    }
}
