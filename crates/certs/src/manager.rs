//! Decides, per managed certificate, when to load, order or renew, and deploys the result.
//!
//! Each look: read what the store (or the files) hold, deploy it if it is new, and when it is
//! missing or due for renewal take the certificate's lease, re-read, order, write under the
//! fencing token, deploy. Failures back off (see [`crate::renewal`]). A certificate is looked at
//! again on a change event for its key, on a kick (SIGHUP), or at the resync interval at the
//! latest, so writes by other processes are picked up even without events.
//!
//! No certificate has a task of its own: a node may hold 100,000. ACME and built-in-CA
//! certificates wait in a queue by when they are next due ([`crate::due`]); one dispatcher
//! hands each due one to a short task for its look, at most [`MAX_LOOKING`] at once, and at most
//! [`MAX_OBTAINING`] order at once (the rest wait in line). Files certificates are looked at by
//! [`FILES_SHARDS`] shared tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use store::{Change, Storage, StorageKey};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::acme::{AcmeIssuer, AcmeSettings};
use crate::bundle::{LastError, now_unix};
use crate::due::DueQueue;
use crate::inspect::{self, Finding};
use crate::internal::InternalCa;
use crate::lock;
pub use crate::managed::{CertId, CertSource, ManagedCert};
use crate::notice::Reminder;
use crate::renewal::{self, Backoff};
use crate::status::{CertState, LiveStatus, StatusRecord};
use crate::{CertBundle, Challenges, DomainName, Error, Result, files, layout};

/// The serving side, as the manager sees it.
pub trait Deployer: Send + Sync + 'static {
    /// Serve `key` for `names` from now on (replacing what was served for `id`).
    fn deploy(&self, id: &CertId, names: &[DomainName], key: Arc<CertifiedKey>);
    /// Stop serving what was deployed for `id`.
    fn retract(&self, id: &CertId);
}

/// A request to renew one certificate now (`renew/<id>.json`), written by
/// [`Manager::request_renewal`] on any node (or by a tool with no manager running). Every
/// node's manager reads it for the certificate when woken by its change event (or when it starts);
/// whichever takes the certificate's lease renews, once for the fleet, and removes the request.
/// It names the serial to replace, so a request that another node already honoured is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The serial of the certificate to replace (hex, as in `CertMeta::serial`).
    pub serial: String,
    pub requested_at: i64,
    pub requested_by: String,
}

/// Timings of the manager; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a certificate lease lasts; renewed every third of it while an order runs.
    pub lease_ttl: Duration,
    /// How long a certificate waits at most between looks at the store.
    pub resync: Duration,
    /// Cluster-wide issuance limits for ACME orders.
    pub limits: crate::limits::ClusterLimits,
    /// How often files certificates are looked at for changes, with up to
    /// [`FILES_PER_POLL`] of them; with more, proportionally less often (see
    /// [`Manager::file_poll`]).
    pub file_poll: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_ttl: Duration::from_secs(30),
            resync: Duration::from_secs(60),
            limits: crate::limits::ClusterLimits::default(),
            file_poll: Duration::from_secs(1),
        }
    }
}
/// Files certificates looked at per `file_poll` at most: each look is two `stat` calls and a
/// task wake-up, so 100,000 certificates are looked at every 10 s, not every second (200,000
/// `stat`s a second would take a good part of a core from the handshakes).
pub const FILES_PER_POLL: usize = 10_000;

/// ACME and built-in-CA certificates looked at per `resync` at most. A look reads the
/// certificate from the store; 100,000 of them on the default 60 s would read the shared store
/// 1,667 times a second from every node. Beyond this many the resync stretches in proportion
/// (100,000: every 1,000 s): a change event still wakes a certificate at once, and a lost batch
/// of events wakes all of them, so the resync is only the net under both.
pub const ISSUED_PER_RESYNC: usize = 6_000;

/// Certificates one node obtains at once (ACME orders, internal CA signatures), each under its
/// lease. The other tasks that find their certificate missing or due wait for a turn before
/// they take their lease: a new node of a fleet with 100,000 internal-CA sites otherwise holds
/// 100,000 leases at once, their renewals swamp the store, they expire and nothing is issued.
/// (ACME orders are bounded further per CA, see `acme.rs`.)
pub const MAX_OBTAINING: usize = 32;
/// Certificate looks at the store at once (reading their certificate, deciding). A
/// look holds a few kilobytes while it waits for its reads: 100,000 tasks starting together
/// held a gigabyte.
pub const MAX_LOOKING: usize = 256;

/// How long to wait between looks while a peer holds the certificate's lease.
const PEER_WAIT: Duration = Duration::from_secs(2);
/// At most this many of a peer's recorded failures are carried into a task's own backoff.
const PEER_FAILURES_CARRIED: u32 = 16;

/// What a certificate's look found ([`CertWorker::issued_step`]).
enum Step {
    /// Nothing to do for this long (or until kicked).
    Wait(Duration),
    /// Obtain a certificate: `current` (the stored one, if usable) is missing, due, or asked to
    /// be renewed (`requested`).
    Obtain {
        current: Option<Box<CertBundle>>,
        requested: bool,
    },
}

struct Task {
    /// Shared with the task's worker: one copy per certificate (100,000 of them on a big node).
    cert: Arc<ManagedCert>,
    run: Running,
    live: Arc<Mutex<LiveStatus>>,
    /// The last [`Manager::set`] that wanted this certificate as it is.
    generation: u64,
}

/// Where a certificate's worker runs.
enum Running {
    /// In the queue of issued certificates (ACME, internal CA).
    Issued(Arc<IssuedCert>),
    /// In one of the files shards (files certificates).
    Files(Arc<FilesCert>),
}

impl Running {
    fn stop(&self) {
        match self {
            Running::Issued(issued) => lock(&issued.slot).stopped = true,
            Running::Files(files) => files.stopped.store(true, Ordering::Relaxed),
        }
    }

    fn kick(&self, manager: &Manager) {
        match self {
            Running::Issued(issued) => manager.kick(issued),
            Running::Files(files) => {
                files.kicked.store(true, Ordering::Relaxed);
                manager.files_shards[files.shard].wake.notify_one();
            }
        }
    }
}

/// One ACME or built-in-CA certificate, in [`Manager::issued`] between looks.
struct IssuedCert {
    worker: CertWorker,
    slot: Mutex<Slot>,
}

/// Where an issued certificate stands.
struct Slot {
    state: IssuedState,
    /// A look or an order has it (and `state` is theirs until they hand it back).
    busy: bool,
    /// The sequence number of its current entry in the queue: older entries are stale.
    seq: u64,
    /// When its current entry falls due; `None` while it has none (busy, stopped, not yet
    /// queued). A wake-up no sooner than that adds no entry.
    due: Option<Instant>,
    /// Woken while busy: look again, re-reading the renewal request, once handed back.
    kicked: bool,
    /// Removed or changed (its replacement, if any, is another entry).
    stopped: bool,
}

/// What a certificate's looks carry from one to the next.
struct IssuedState {
    deployed_serial: Option<String>,
    cached_serial: Option<String>,
    backoff: Backoff,
    renew: RenewWanted,
}

impl IssuedState {
    fn new() -> Self {
        IssuedState {
            deployed_serial: None,
            cached_serial: None,
            backoff: Backoff::new(),
            // Read the renewal request at the first look (later, when woken).
            renew: RenewWanted {
                check: true,
                serial: None,
            },
        }
    }
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: IssuedState::new(),
            busy: false,
            seq: 0,
            due: None,
            kicked: false,
            stopped: false,
        }
    }

    /// Whether the queue entry `seq` is the one to act on.
    fn is_current(&self, seq: u64) -> bool {
        !self.stopped && !self.busy && self.seq == seq
    }
}

impl IssuedCert {
    /// Whether the queue entry `seq` is the one to act on (for [`DueQueue::retain`]).
    fn current(self: &Arc<Self>, seq: u64) -> bool {
        lock(&self.slot).is_current(seq)
    }

    /// Take it for a look when `seq` is its current entry (for [`DueQueue::next`]).
    fn take(self: &Arc<Self>, seq: u64) -> bool {
        let mut slot = lock(&self.slot);
        let current = slot.is_current(seq);
        if current {
            slot.busy = true;
            slot.due = None;
        }
        current
    }

    /// The state of a certificate taken (busy), with a kick received meanwhile applied.
    fn take_state(&self) -> IssuedState {
        let mut slot = lock(&self.slot);
        let mut state = std::mem::replace(&mut slot.state, IssuedState::new());
        if std::mem::take(&mut slot.kicked) {
            state.renew.check = true;
        }
        state
    }

    fn span(&self) -> tracing::Span {
        let cert = &self.worker.cert;
        info_span!("cert", cert = %cert.id, source = %cert.source.kind())
    }
}

/// Files certificates are looked at by [`FILES_SHARDS`] shared tasks, not a task each: a task
/// costs about a kilobyte and a wake-up per look, and a node may serve 100,000 of them.
#[derive(Default)]
struct FilesShard {
    /// Certificates added since the shard's task last looked: loaded at once.
    fresh: Mutex<Vec<Arc<FilesCert>>>,
    wake: Notify,
}

/// One files certificate in a shard.
struct FilesCert {
    worker: CertWorker,
    shard: usize,
    /// Removed or changed: the shard drops it (its replacement, if any, is another entry).
    stopped: AtomicBool,
    /// Look at the files at the shard's next pass, changed or not (SIGHUP).
    kicked: AtomicBool,
}

/// How many tasks share the files certificates: enough to load thousands of them on every core
/// at start.
const FILES_SHARDS: usize = 4;

/// How often a files shard wakes to look at its share of the certificates due.
const FILES_TICK: Duration = Duration::from_millis(100);

/// Keeps every configured certificate obtained, renewed and deployed.
pub struct Manager {
    timings: Timings,
    limiter: crate::limits::Limiter,
    store: Arc<dyn Storage>,
    cache: Option<Arc<dyn Storage>>,
    deployer: Arc<dyn Deployer>,
    challenges: Arc<Challenges>,
    internal: Arc<InternalCa>,
    node: String,
    issuers: Mutex<HashMap<String, Arc<AcmeIssuer>>>,
    /// The DNS-01 solver handed to every ACME issuer ([`Manager::set_dns01`]).
    dns01: Mutex<Option<Arc<crate::Dns01>>>,
    tasks: Mutex<HashMap<CertId, Task>>,
    /// Counts [`Manager::set`] calls (see [`Task::generation`]).
    generation: AtomicU64,
    /// How many of `tasks` are files certificates ([`Manager::file_poll`]).
    files: AtomicUsize,
    /// The tasks files certificates are looked at in (started with the first one).
    files_shards: Vec<FilesShard>,
    files_started: std::sync::Once,
    /// The issued certificates (ACME, internal CA) by when each is next looked at.
    issued: DueQueue<Arc<IssuedCert>>,
    /// How many of `tasks` are issued certificates (to drop stale queue entries in time).
    issued_live: AtomicUsize,
    /// The dispatcher of `issued` (started with the first one).
    issued_started: std::sync::Once,
    /// Issued certificates due for an order, waiting for a turn ([`MAX_OBTAINING`]).
    wanting: Mutex<VecDeque<Arc<IssuedCert>>>,
    /// Storage key -> the issued certificate it belongs to (its certificate, its renewal
    /// request): a change event for the key wakes the certificate.
    watch: Mutex<HashMap<StorageKey, Arc<IssuedCert>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// A turn to obtain a certificate ([`MAX_OBTAINING`]).
    obtaining: Arc<Semaphore>,
    /// A turn to look ([`MAX_LOOKING`]).
    looking: Arc<Semaphore>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub fn new(store: Arc<dyn Storage>, deployer: Arc<dyn Deployer>, node: String) -> Arc<Self> {
        Self::with_cache(store, None, deployer, node, Timings::default())
    }

    /// Like [`Manager::new`], keeping a copy of every certificate it serves in `cache` (a store
    /// local to this node), so it can serve them, and restart, while the shared store is down.
    pub fn with_cache(
        store: Arc<dyn Storage>,
        cache: Option<Arc<dyn Storage>>,
        deployer: Arc<dyn Deployer>,
        node: String,
        timings: Timings,
    ) -> Arc<Self> {
        let challenges = Arc::new(Challenges::new(store.clone()));
        let internal = Arc::new(InternalCa::new(store.clone(), node.clone()));
        let limiter = crate::limits::Limiter::new(store.clone(), timings.limits, node.clone());
        let manager = Arc::new(Manager {
            timings,
            limiter,
            store,
            cache,
            deployer,
            challenges,
            internal,
            node,
            issuers: Mutex::default(),
            dns01: Mutex::default(),
            tasks: Mutex::default(),
            generation: AtomicU64::new(0),
            files: AtomicUsize::new(0),
            files_shards: (0..FILES_SHARDS).map(|_| FilesShard::default()).collect(),
            files_started: std::sync::Once::new(),
            issued: DueQueue::default(),
            issued_live: AtomicUsize::new(0),
            issued_started: std::sync::Once::new(),
            wanting: Mutex::default(),
            watch: Mutex::default(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            obtaining: Arc::new(Semaphore::new(MAX_OBTAINING)),
            looking: Arc::new(Semaphore::new(MAX_LOOKING)),
        });
        manager.clone().spawn_change_listener();
        manager
    }

    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    pub fn internal_ca(&self) -> Arc<InternalCa> {
        self.internal.clone()
    }

    /// Make the set of managed certificates exactly `certs`: start tasks for new ones, restart
    /// changed ones, stop and retract removed ones, and kick unchanged ones (a reload re-reads
    /// files at once).
    pub fn apply(self: &Arc<Self>, certs: impl IntoIterator<Item = ManagedCert>) {
        self.set(certs, true);
    }

    /// As [`Manager::apply`] but unchanged certificates are left alone: for a change of the
    /// site registry, where kicking every task would cost one store read per certificate (with
    /// 10,000 sites, for each site added).
    pub fn update(self: &Arc<Self>, certs: impl IntoIterator<Item = ManagedCert>) {
        self.set(certs, false);
    }

    /// One pass over `certs` (an iterator: 100,000 of them need not be held at once): the
    /// unchanged are marked with this call's generation, the new and changed kept aside; then
    /// the unmarked are stopped (the removed retracted), then the kept aside started. The
    /// first of two certificates with one id wins.
    fn set(self: &Arc<Self>, certs: impl IntoIterator<Item = ManagedCert>, kick: bool) {
        let mut tasks = lock(&self.tasks);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fresh: Vec<ManagedCert> = Vec::new();
        let mut fresh_ids: HashSet<CertId> = HashSet::new();
        for cert in certs {
            match tasks.get_mut(&cert.id) {
                Some(task) if task.generation == generation => {}
                Some(task) if *task.cert == cert => {
                    task.generation = generation;
                    if kick {
                        task.run.kick(self);
                    }
                }
                _ => {
                    if fresh_ids.insert(cert.id.clone()) {
                        fresh.push(cert);
                    }
                }
            }
        }
        let stale: Vec<CertId> = tasks
            .iter()
            .filter(|(_, task)| task.generation != generation)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(task) = tasks.remove(&id) {
                task.run.stop();
                if let Some(key) = task.cert.storage_key() {
                    let mut watch = lock(&self.watch);
                    watch.remove(&key);
                    watch.remove(&layout::renew_request(&id));
                }
                if !fresh_ids.contains(&id) {
                    info!(cert = %id, "certificate removed from the configuration");
                    self.deployer.retract(&id);
                }
            }
        }
        drop(fresh_ids);
        for cert in fresh {
            let id = cert.id.clone();
            // A files certificate that loads fine needs no status record: `fleetgate certs`
            // reads the files themselves. Only its failures are recorded.
            let last_record = match cert.source {
                CertSource::Files { .. } => Some((CertState::Valid, None, 0)),
                _ => None,
            };
            let live = Arc::new(Mutex::new(LiveStatus::default()));
            let cert = Arc::new(cert);
            let worker = CertWorker {
                manager: self.clone(),
                cert: cert.clone(),
                last_record: Mutex::new(last_record),
                live: live.clone(),
                reminder: Mutex::new(Reminder::default()),
            };
            let run = if matches!(cert.source, CertSource::Files { .. }) {
                self.files_started.call_once(|| {
                    for shard in 0..FILES_SHARDS {
                        self.tracker.spawn(self.clone().files_shard(shard));
                    }
                });
                let shard = jitter_bucket(&id, FILES_SHARDS);
                let files = Arc::new(FilesCert {
                    worker,
                    shard,
                    stopped: AtomicBool::new(false),
                    kicked: AtomicBool::new(false),
                });
                lock(&self.files_shards[shard].fresh).push(files.clone());
                self.files_shards[shard].wake.notify_one();
                Running::Files(files)
            } else {
                let issued = Arc::new(IssuedCert {
                    worker,
                    slot: Mutex::new(Slot::new()),
                });
                if let Some(key) = cert.storage_key() {
                    let mut watch = lock(&self.watch);
                    watch.insert(key, issued.clone());
                    watch.insert(layout::renew_request(&id), issued.clone());
                }
                self.issued_started.call_once(|| {
                    self.tracker.spawn(self.clone().dispatch_issued());
                });
                self.schedule(&issued, Instant::now());
                Running::Issued(issued)
            };
            tasks.insert(
                id,
                Task {
                    cert,
                    run,
                    live,
                    generation,
                },
            );
        }
        let files = tasks
            .values()
            .filter(|t| matches!(t.run, Running::Files(_)))
            .count();
        self.files.store(files, Ordering::Relaxed);
        self.issued_live
            .store(tasks.len() - files, Ordering::Relaxed);
        drop(tasks);
        self.compact_issued();
    }

    /// Queue `issued` for a look at `at`, unless a look or an order has it (they queue it when
    /// they hand it back), it was stopped, or it is queued for no later than `at` already (a
    /// change event and SIGHUP, or a lost batch of events waking it for its two keys).
    fn schedule(&self, issued: &Arc<IssuedCert>, at: Instant) {
        let seq = {
            let mut slot = lock(&issued.slot);
            if slot.stopped || slot.busy || slot.due.is_some_and(|due| due <= at) {
                return;
            }
            slot.seq += 1;
            slot.due = Some(at);
            slot.seq
        };
        self.issued.push(at, seq, issued.clone());
    }

    /// Look at `issued` now, re-reading its renewal request (a change event, SIGHUP).
    fn kick(&self, issued: &Arc<IssuedCert>) {
        {
            let mut slot = lock(&issued.slot);
            if slot.busy {
                slot.kicked = true;
                return;
            }
            slot.state.renew.check = true;
        }
        self.schedule(issued, Instant::now());
        self.compact_issued();
    }

    /// Drop stale queue entries once they outnumber the live ones (each kick of a queued
    /// certificate leaves one behind until its time comes).
    fn compact_issued(&self) {
        let live = self.issued_live.load(Ordering::Relaxed);
        if self.issued.len() > 2 * live + 1024 {
            self.issued.retain(IssuedCert::current);
        }
    }

    /// Hand each issued certificate that falls due to a task of its own for one look, with a
    /// turn to look.
    async fn dispatch_issued(self: Arc<Self>) {
        loop {
            let turn = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                turn = self.looking.clone().acquire_owned() => turn,
            };
            let Ok(turn) = turn else { return };
            let issued = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                issued = self.issued.next(IssuedCert::take) => issued,
            };
            let span = issued.span();
            self.tracker
                .spawn(self.clone().look(issued, turn).instrument(span));
        }
    }

    /// One look at `issued`. Due for an order: at once with a free turn to order, else in
    /// line behind the others waiting for one ([`Manager::order_wanting`]).
    async fn look(self: Arc<Self>, issued: Arc<IssuedCert>, turn: OwnedSemaphorePermit) {
        let mut state = issued.take_state();
        // Boxed: the ordering future is large.
        let step = Box::pin(issued.worker.issued_step(&mut state)).await;
        drop(turn);
        let delay = match step {
            Step::Wait(delay) => delay,
            Step::Obtain { current, requested } => {
                let Ok(turn) = self.obtaining.clone().try_acquire_owned() else {
                    lock(&issued.slot).state = state;
                    lock(&self.wanting).push_back(issued);
                    self.serve_wanting();
                    return;
                };
                let delay =
                    Box::pin(issued.worker.obtain_step(current, requested, &mut state)).await;
                drop(turn);
                // The turn may be the one those in line wait for.
                self.serve_wanting();
                delay
            }
        };
        self.hand_back(&issued, state, delay);
    }

    /// Start an [`Manager::order_wanting`] for each free turn to order while certificates wait.
    fn serve_wanting(self: &Arc<Self>) {
        loop {
            let Ok(turn) = self.obtaining.clone().try_acquire_owned() else {
                return;
            };
            let Some(issued) = lock(&self.wanting).pop_front() else {
                drop(turn);
                // One may have come in line while the turn was held.
                if lock(&self.wanting).is_empty() {
                    return;
                }
                continue;
            };
            self.tracker.spawn(self.clone().order_wanting(issued, turn));
        }
    }

    /// With a turn to order: look at `issued` again (a peer may have ordered it meanwhile) and
    /// order it if still due, then the next in line, until none waits.
    async fn order_wanting(
        self: Arc<Self>,
        mut issued: Arc<IssuedCert>,
        turn: OwnedSemaphorePermit,
    ) {
        loop {
            let mut state = issued.take_state();
            let skip = self.shutdown.is_cancelled() || lock(&issued.slot).stopped;
            let delay = if skip {
                Duration::ZERO
            } else {
                let worker = &issued.worker;
                let order = async {
                    match Box::pin(worker.issued_step(&mut state)).await {
                        Step::Wait(delay) => delay,
                        Step::Obtain { current, requested } => {
                            Box::pin(worker.obtain_step(current, requested, &mut state)).await
                        }
                    }
                };
                order.instrument(issued.span()).await
            };
            self.hand_back(&issued, state, delay);
            let Some(next) = lock(&self.wanting).pop_front() else {
                break;
            };
            issued = next;
        }
        drop(turn);
        self.serve_wanting();
    }

    /// A look or an order is done with `issued`: queue its next look in `delay` (at once if it
    /// was kicked meanwhile).
    fn hand_back(&self, issued: &Arc<IssuedCert>, state: IssuedState, delay: Duration) {
        let kicked = {
            let mut slot = lock(&issued.slot);
            slot.state = state;
            slot.busy = false;
            std::mem::take(&mut slot.kicked)
        };
        if kicked {
            self.kick(issued);
        } else if !self.shutdown.is_cancelled() {
            self.schedule(issued, Instant::now() + delay);
        }
    }

    /// Shard `shard`'s task: loads the certificates added to it at once, then looks at each
    /// every [`Manager::file_poll`] (spread over the poll in [`FILES_TICK`] steps), and at all
    /// of them when kicked.
    async fn files_shard(self: Arc<Self>, shard: usize) {
        struct Looked {
            files: Arc<FilesCert>,
            deployed_serial: Option<String>,
            state: FilesState,
        }
        let me = &self.files_shards[shard];
        let mut all: Vec<Looked> = Vec::new();
        let mut next = 0usize;
        // How many looks are owed: a share of the list per tick, carried over in fractions.
        let mut owed = 0f64;
        loop {
            let fresh = std::mem::take(&mut *lock(&me.fresh));
            for files in fresh {
                if files.stopped.load(Ordering::Relaxed) {
                    continue;
                }
                let mut looked = Looked {
                    files,
                    deployed_serial: None,
                    state: FilesState::default(),
                };
                looked.look().await;
                all.push(looked);
                // Thousands at start: let the runtime serve between them.
                tokio::task::yield_now().await;
            }
            all.retain(|l| !l.files.stopped.load(Ordering::Relaxed));
            let kicked: Vec<usize> = (0..all.len())
                .filter(|&i| all[i].files.kicked.swap(false, Ordering::Relaxed))
                .collect();
            for i in kicked {
                all[i].state.stamp = None;
                all[i].look().await;
            }
            let poll = self.file_poll();
            let tick = FILES_TICK.min(poll);
            if !all.is_empty() {
                owed += all.len() as f64 * tick.as_secs_f64() / poll.as_secs_f64();
                owed = owed.min(all.len() as f64);
                while owed >= 1.0 {
                    owed -= 1.0;
                    next %= all.len();
                    all[next].look().await;
                    next += 1;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = me.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }

        impl Looked {
            async fn look(&mut self) {
                let worker = &self.files.worker;
                let CertSource::Files { cert, key } = &worker.cert.source else {
                    return;
                };
                let span = info_span!("cert", cert = %worker.cert.id, source = "files");
                Box::pin(worker.files_step(cert, key, &mut self.deployed_serial, &mut self.state))
                    .instrument(span)
                    .await;
            }
        }
    }

    /// How long an ACME or built-in-CA certificate waits at most between looks at the store:
    /// `resync`, times the number of them over [`ISSUED_PER_RESYNC`] when there are more.
    pub fn resync(&self) -> Duration {
        let issued = self.issued_live.load(Ordering::Relaxed);
        scaled_poll(self.timings.resync, issued, ISSUED_PER_RESYNC)
    }

    /// How long a files certificate's task waits between looks at its files: `file_poll`, times
    /// the number of files certificates over [`FILES_PER_POLL`] when there are more.
    pub fn file_poll(&self) -> Duration {
        let files = self.files.load(std::sync::atomic::Ordering::Relaxed);
        scaled_poll(self.timings.file_poll, files, FILES_PER_POLL)
    }

    /// What this process's task for `id` knows now: what it serves, the findings on the last
    /// certificate it examined, how often it logged the current problem. `None` when `id` is not
    /// managed.
    pub fn live_status(&self, id: &str) -> Option<LiveStatus> {
        let tasks = lock(&self.tasks);
        let task = tasks.get(id)?;
        Some(lock(&task.live).clone())
    }

    /// Every managed certificate with what its task knows now (for metrics), in no order.
    pub fn live_statuses(&self) -> Vec<(ManagedCert, LiveStatus)> {
        let tasks = lock(&self.tasks);
        tasks
            .values()
            .map(|task| (ManagedCert::clone(&task.cert), lock(&task.live).clone()))
            .collect()
    }

    /// Stop: nothing more is looked at, and the looks and orders in flight finish their step
    /// (an order releases its lease).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Solve DNS-01 challenges through `dns01` (the node's delegated zone). Call before
    /// [`Manager::apply`]: issuers made earlier keep what they had.
    pub fn set_dns01(&self, dns01: Arc<crate::Dns01>) {
        *lock(&self.dns01) = Some(dns01);
    }

    fn issuer(&self, settings: &AcmeSettings) -> Arc<AcmeIssuer> {
        let dns01 = lock(&self.dns01).clone();
        let mut issuers = lock(&self.issuers);
        issuers
            .entry(settings.directory.clone())
            .or_insert_with(|| {
                let issuer = AcmeIssuer::new(
                    settings.clone(),
                    self.store.clone(),
                    self.challenges.clone(),
                    self.node.clone(),
                );
                Arc::new(match dns01 {
                    Some(dns01) => issuer.with_dns01(dns01),
                    None => issuer,
                })
            })
            .clone()
    }

    /// The status of each certificate, read from the store and files (for `fleetgate certs`).
    /// Each certificate is judged by [`crate::inspect::check_certificate`], as `run` judges it.
    pub async fn statuses(store: &dyn Storage, certs: &[ManagedCert]) -> Vec<crate::CertStatus> {
        crate::status::statuses(store, certs, &|_| None).await
    }

    /// As [`Manager::statuses`], on a running node: a certificate this manager serves at the
    /// stored serial is taken as checked, with the findings of its check (see
    /// [`crate::status::statuses`]).
    pub async fn statuses_served(
        &self,
        store: &dyn Storage,
        certs: &[ManagedCert],
    ) -> Vec<crate::CertStatus> {
        let served = |id: &CertId| {
            let tasks = lock(&self.tasks);
            let live = lock(&tasks.get(id)?.live);
            let (serial, _) = live.serving.clone()?;
            Some((serial, live.findings.clone()))
        };
        crate::status::statuses(store, certs, &served).await
    }

    fn spawn_change_listener(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        let shutdown = self.shutdown.clone();
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    change = events.recv() => change,
                };
                let Some(manager) = weak.upgrade() else {
                    return;
                };
                match change {
                    Ok(Change::Put(key) | Change::Deleted(key)) => {
                        let issued = lock(&manager.watch).get(&key).cloned();
                        if let Some(issued) = issued {
                            manager.kick(&issued);
                        }
                    }
                    Ok(Change::Missed)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: wake everyone to re-read.
                        let all: Vec<Arc<IssuedCert>> =
                            lock(&manager.watch).values().cloned().collect();
                        for issued in all {
                            manager.kick(&issued);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Ask the fleet to renew `cert` now: writes a [`RenewRequest`] for the serial stored now.
    /// `Ok(None)`: nothing is stored yet (the certificate is being obtained anyway). Files
    /// certificates are not renewed by fleetgate (`Error::Config`).
    pub async fn request_renewal(
        store: &dyn Storage,
        cert: &ManagedCert,
        by: &str,
    ) -> Result<Option<RenewRequest>> {
        let Some(key) = cert.storage_key() else {
            return Err(Error::Config(format!(
                "{} comes from files; replace the files to renew it",
                cert.id
            )));
        };
        let Some(bytes) = store.get(&key).await? else {
            return Ok(None);
        };
        let bundle = CertBundle::from_json(&bytes).map_err(|e| Error::InvalidCertificate {
            path: None,
            detail: format!("the stored certificate is unreadable: {e}"),
        })?;
        let request = RenewRequest {
            serial: bundle.meta.serial.clone(),
            requested_at: now_unix(),
            requested_by: by.to_string(),
        };
        let bytes = serde_json::to_vec(&request)
            .map_err(|e| Error::Config(format!("cannot encode the renewal request: {e}")))?;
        store.put(&layout::renew_request(&cert.id), &bytes).await?;
        info!(cert = %cert.id, serial = %request.serial, by, "renewal requested");
        Ok(Some(request))
    }
}

/// The loop that keeps one certificate current.
struct CertWorker {
    manager: Arc<Manager>,
    cert: Arc<ManagedCert>,
    /// What this worker last recorded (state, error, failures): unchanged records are not
    /// written again, so thousands of quiet certificates cost no store writes.
    last_record: Mutex<Option<(CertState, Option<String>, u32)>>,
    /// What `Manager::live_status` shows.
    live: Arc<Mutex<LiveStatus>>,
    /// Keeps a standing problem (files refused or missing, a stored certificate that cannot be
    /// served) from being logged at every look.
    reminder: Mutex<Reminder>,
}

/// What the files source remembers between looks.
#[derive(Debug, Default)]
struct FilesState {
    /// The files' stamp when last loaded (accepted or refused).
    stamp: Option<files::FileStamp>,
    /// Refused only for time (not yet valid): look again from this instant (unix seconds).
    recheck_at: Option<i64>,
    /// The not-after of the certificate served from the files.
    served_not_after: Option<i64>,
    /// The last expiry threshold logged for it.
    expiry_warned: Option<u32>,
}

impl CertWorker {
    /// Serve `bundle` unless it is already served or [`crate::inspect`] finds it fatal (then
    /// the error says why, and what was served stays in service).
    fn deploy(&self, bundle: &CertBundle, deployed_serial: &mut Option<String>) -> Result<()> {
        if deployed_serial.as_deref() == Some(bundle.meta.serial.as_str()) {
            return Ok(());
        }
        let key = self.vet(bundle)?;
        self.serve(bundle, key, deployed_serial);
        Ok(())
    }

    /// Hands `key` (parsed from `bundle`, which passed the check) to the deployer.
    fn serve(
        &self,
        bundle: &CertBundle,
        key: Arc<CertifiedKey>,
        deployed_serial: &mut Option<String>,
    ) {
        self.manager
            .deployer
            .deploy(&self.cert.id, &self.cert.domains, key);
        info!(serial = %bundle.meta.serial, not_after = bundle.meta.not_after, "certificate deployed");
        *deployed_serial = Some(bundle.meta.serial.clone());
        let mut live = lock(&self.live);
        live.serving = Some((bundle.meta.serial.clone(), bundle.meta.not_after));
        live.last_error = None;
    }

    /// The check every certificate passes before it is served or stored: the key matches and
    /// nothing fatal is found for this certificate's domains now. Returns the parsed pair.
    fn vet(&self, bundle: &CertBundle) -> Result<Arc<CertifiedKey>> {
        let checked = bundle.certified_key().map(|key| {
            let report = inspect::check_parsed(&key, &self.cert.domains, now_unix());
            (key, report)
        });
        let result = match checked {
            Ok((key, report)) if !report.is_fatal() => {
                lock(&self.live).findings = kept(report.findings);
                return Ok(key);
            }
            Ok((_, report)) => report,
            // Does not parse, or the key is another's: the full check says which.
            Err(e) => {
                let report = inspect::check_certificate(
                    &bundle.chain_pem,
                    &bundle.key_pem,
                    &self.cert.domains,
                    now_unix(),
                );
                if !report.is_fatal() {
                    return Err(e);
                }
                report
            }
        };
        let err = result.to_error(None);
        let mut live = lock(&self.live);
        live.findings = kept(result.findings);
        live.last_error = Some(err.to_string());
        live.refusals += 1;
        Err(err)
    }

    /// Log a standing problem: when it appears or changes, then on the reminder schedule.
    fn say(&self, problem: &str, what: &str) {
        let mut reminder = lock(&self.reminder);
        if reminder.due(problem, std::time::Instant::now()) {
            let said = reminder.said();
            drop(reminder);
            warn!(error = %problem, times = said, "{what}");
            lock(&self.live).problem_logged = said;
        }
    }

    /// The standing problem is gone.
    fn resolved(&self, what: &str) {
        if lock(&self.reminder).clear() {
            info!("{what}");
        }
        lock(&self.live).problem_logged = 0;
    }

    /// Log the coming expiry of the served files certificate at each threshold, once.
    fn warn_expiry(&self, state: &mut FilesState, now: i64) {
        let Some(not_after) = state.served_not_after else {
            return;
        };
        let Some(threshold) = inspect::expiry_warning_due(not_after - now, state.expiry_warned)
        else {
            return;
        };
        state.expiry_warned = Some(threshold);
        lock(&self.live).expiry_warned = Some(threshold);
        if threshold == 0 {
            error!(
                not_after,
                "the certificate from files has expired and is still served (nothing better to \
                 serve); replace the files"
            );
        } else {
            warn!(
                not_after,
                days_left = (not_after - now) / 86_400,
                threshold_days = threshold,
                "the certificate from files expires soon; replace the files"
            );
        }
    }

    async fn files_step(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
        deployed_serial: &mut Option<String>,
        state: &mut FilesState,
    ) {
        let now = now_unix();
        lock(&self.live).looks += 1;
        self.warn_expiry(state, now);
        // Only re-read when the files changed (a missing file has no stamp: it is looked at
        // each time, and the reminder keeps the log quiet), or when a certificate refused only
        // for its start date may have become valid.
        let stamp = files::stamp(cert, key);
        let time_passed = state.recheck_at.is_some_and(|at| now >= at);
        if stamp.is_some() && stamp == state.stamp && !time_passed {
            return;
        }
        state.stamp = stamp;
        state.recheck_at = None;
        match files::load_checked(cert, key, &self.cert.domains, now) {
            (report, Some(bundle)) => {
                // The serial may stay the same when an operator re-saves the same pair.
                *deployed_serial = None;
                // `load_checked` applied `vet`'s check just now: no second parse of the leaf.
                match bundle.certified_key() {
                    Ok(parsed) => {
                        lock(&self.live).findings = kept(report.findings.clone());
                        self.serve(&bundle, parsed, deployed_serial);
                    }
                    Err(e) => {
                        self.say(
                            &e.to_string(),
                            "certificate files refused; the previous pair stays in service",
                        );
                        return;
                    }
                }
                self.resolved("certificate files accepted");
                for warning in report.warnings() {
                    // Expiry is said by threshold (`warn_expiry`), not at every change.
                    if !matches!(warning, Finding::ExpiresSoon { .. }) {
                        warn!(warning = %warning, "certificate files deployed with a warning");
                    }
                }
                if state.served_not_after != Some(bundle.meta.not_after) {
                    state.expiry_warned = None;
                    lock(&self.live).expiry_warned = None;
                }
                state.served_not_after = Some(bundle.meta.not_after);
                self.warn_expiry(state, now);
                self.record(CertState::Valid, None, 0, None, None).await;
            }
            (report, None) => {
                if report.only_time_stands_in_the_way() {
                    state.recheck_at = report
                        .leaf
                        .as_ref()
                        .map(|l| l.not_before - inspect::CLOCK_SKEW);
                }
                let e = report.to_error(Some(cert.to_path_buf()));
                {
                    let mut live = lock(&self.live);
                    live.findings = kept(report.findings);
                    live.last_error = Some(e.to_string());
                    live.refusals += 1;
                }
                let what = if deployed_serial.is_some() {
                    "certificate files refused; the previous pair stays in service"
                } else {
                    "certificate files refused; nothing to serve for these names yet"
                };
                self.say(&e.to_string(), what);
                self.record(CertState::Failing, Some(&e), 0, None, None)
                    .await;
            }
        }
    }

    /// The copy in this node's local cache, if any.
    async fn load_cached(&self) -> Option<CertBundle> {
        let (cache, key) = (self.manager.cache.as_ref()?, self.cert.storage_key()?);
        let bytes = cache.get(&key).await.ok()??;
        CertBundle::from_json(&bytes).ok()
    }

    /// Keep the local cache in step with what is served (only when the serial changed).
    async fn save_cached(&self, bundle: &CertBundle, cached_serial: &mut Option<String>) {
        let (Some(cache), Some(key)) = (self.manager.cache.as_ref(), self.cert.storage_key())
        else {
            return;
        };
        if cached_serial.as_deref() == Some(bundle.meta.serial.as_str()) {
            return;
        }
        match cache.put(&key, &bundle.to_json()).await {
            Ok(()) => *cached_serial = Some(bundle.meta.serial.clone()),
            Err(e) => debug!(error = %e, "could not update the local cache"),
        }
    }

    async fn load_stored(&self) -> Result<Option<CertBundle>> {
        let Some(key) = self.cert.storage_key() else {
            return Ok(None);
        };
        match self.manager.store.get(&key).await? {
            Some(bytes) => match CertBundle::from_json(&bytes) {
                Ok(bundle) => Ok(Some(bundle)),
                Err(e) => {
                    warn!(key = %key, error = %e, "stored certificate is unreadable; ordering a new one");
                    Ok(None)
                }
            },
            None => Ok(None),
        }
    }

    /// Serve what the store (or the local copy) has; [`Step::Obtain`] when the certificate is
    /// missing, unusable, due or asked to be renewed.
    async fn issued_step(&self, state: &mut IssuedState) -> Step {
        let IssuedState {
            deployed_serial,
            cached_serial,
            backoff,
            renew,
        } = state;
        let now = now_unix();
        // Nothing served yet (this process just started): serve the local copy at once rather
        // than after the store answers, which takes its whole timeout when the store is down or
        // hung. A newer stored certificate replaces it below.
        if deployed_serial.is_none()
            && let Some(bundle) = self.load_cached().await.filter(|b| self.cert.wants(b))
        {
            match self.deploy(&bundle, deployed_serial) {
                Ok(()) => {
                    info!(serial = %bundle.meta.serial, "serving the locally cached certificate until the store answers")
                }
                Err(e) => self.say(
                    &e.to_string(),
                    "the locally cached certificate cannot be served",
                ),
            }
            *cached_serial = Some(bundle.meta.serial.clone());
        }
        let stored = match self.load_stored().await {
            Ok(b) => b,
            Err(e) => {
                // The shared store is down: keep serving what we have (or the local copy, see
                // above) and retry with backoff.
                warn!(error = %e, "cannot read the store; serving what we have");
                return Step::Wait(backoff_store(backoff));
            }
        };
        let current = stored.filter(|b| self.cert.wants(b));
        if let Some(bundle) = &current {
            self.save_cached(bundle, cached_serial).await;
        }
        // A stored certificate that cannot be served is replaced, unless only its start date
        // stands in the way (a peer's clock ahead of ours): then wait for it.
        let mut unusable = false;
        if let Some(bundle) = &current {
            match self.deploy(bundle, deployed_serial) {
                Ok(()) => self.resolved("the stored certificate can be served"),
                Err(Error::Rejected { findings, .. })
                    if findings.iter().all(Finding::is_temporal) =>
                {
                    self.say(
                        &format!("{} (serial {})", join(&findings), bundle.meta.serial),
                        "the stored certificate is not valid yet; waiting for its start",
                    );
                    let wait = (bundle.meta.not_before - inspect::CLOCK_SKEW - now).max(1) as u64;
                    return Step::Wait(Duration::from_secs(wait).min(self.manager.resync()));
                }
                Err(e) => {
                    unusable = true;
                    self.say(
                        &format!("{e} (serial {})", bundle.meta.serial),
                        "the stored certificate cannot be served; ordering a new one",
                    );
                }
            }
        }
        let due = current
            .as_ref()
            .filter(|_| !unusable)
            .map(|b| renewal::renew_at(&b.meta, jitter_seed(&b.meta.serial)))
            .unwrap_or(now);
        if renew.check {
            renew.check = false;
            renew.serial = self.load_renew_request().await.map(|r| r.serial);
        }
        let requested = current
            .as_ref()
            .is_some_and(|b| renew.serial.as_deref() == Some(b.meta.serial.as_str()));
        if let Some(bundle) = &current
            && due > now
            && !requested
        {
            if let Some(next_ari) = self.maybe_check_ari(bundle, now).await {
                let wait = (due.min(next_ari) - now).max(1) as u64;
                return Step::Wait(Duration::from_secs(wait).min(self.manager.resync()));
            }
            let wait = (due - now).max(1) as u64;
            return Step::Wait(Duration::from_secs(wait).min(self.manager.resync()));
        }
        Step::Obtain {
            current: current.map(Box::new),
            requested,
        }
    }

    /// Missing or due: obtain under the certificate's lease (a peer may have done it since).
    /// Returns how long to wait.
    async fn obtain_step(
        &self,
        current: Option<Box<CertBundle>>,
        requested: bool,
        state: &mut IssuedState,
    ) -> Duration {
        let IssuedState {
            deployed_serial,
            backoff,
            renew,
            ..
        } = state;
        let lock_name = layout::cert_lock(&self.cert.id);
        let guard = match store::lock(
            &self.manager.store,
            &lock_name,
            &self.manager.node,
            self.manager.timings.lease_ttl,
            Duration::ZERO,
        )
        .await
        {
            Ok(Some(guard)) => guard,
            Ok(None) => {
                debug!("a peer holds the certificate's lease; waiting for its result");
                return PEER_WAIT;
            }
            Err(e) => {
                warn!(error = %e, "cannot take the certificate's lease");
                return backoff_store(backoff);
            }
        };
        // Re-check after acquiring: a peer may have finished just before we got the lease.
        match self.load_stored().await {
            Ok(Some(fresh))
                if self.cert.wants(&fresh)
                    && renewal::renew_at(&fresh.meta, jitter_seed(&fresh.meta.serial))
                        > now_unix()
                    && !self.renewal_requested_for(&fresh).await =>
            {
                // Taken only if it can be served; an unusable one is replaced below.
                if self.deploy(&fresh, deployed_serial).is_ok() {
                    renew.serial = None;
                    let _ = guard.release().await;
                    return Duration::ZERO;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = guard.release().await;
                warn!(error = %e, "cannot read the store; will retry");
                return backoff_store(backoff);
            }
        }
        // A peer's failed attempt counts for the cluster: wait out the backoff it recorded, or
        // every node would try in turn as soon as the lease is free.
        if let Some(wait) = self.peer_backoff(backoff).await {
            let _ = guard.release().await;
            debug!(
                retry_in_secs = wait.as_secs(),
                "a peer's attempt failed recently; waiting out its backoff"
            );
            return wait.min(self.manager.resync());
        }
        let state = if current.is_some() {
            CertState::Renewing
        } else {
            CertState::Pending
        };
        self.record(state, None, backoff.failures(), None, Some(&guard.lease()))
            .await;
        // A new certificate passes the same check before it is stored: one the CA got wrong is
        // a failed attempt (with backoff), never a loop of orders.
        let result = self
            .obtain(current.as_deref())
            .await
            .and_then(|bundle| self.vet(&bundle).map(|_| bundle));
        let lease = guard.lease();
        let outcome = self
            .settle(result, requested, renew, deployed_serial, backoff, &lease)
            .await;
        let _ = guard.release().await;
        outcome
    }

    /// What became of an attempt: a new certificate is stored under the lease (fenced), then
    /// served; a failure is recorded with its backoff. Returns how long to wait.
    async fn settle(
        &self,
        result: Result<CertBundle>,
        requested: bool,
        renew: &mut RenewWanted,
        deployed_serial: &mut Option<String>,
        backoff: &mut Backoff,
        lease: &store::Lease,
    ) -> Duration {
        match result {
            Ok(bundle) => {
                let key = self.cert.storage_key();
                let written = match key {
                    Some(key) => self
                        .manager
                        .store
                        .put_fenced(&key, &bundle.to_json(), lease)
                        .await
                        .map_err(Error::from),
                    None => Ok(()),
                };
                match written {
                    Ok(()) => {
                        backoff.reset();
                        if requested {
                            info!(replaced = ?renew.serial, "renewed on request");
                            // The request is honoured (it names the serial just replaced, so a
                            // copy left by a failed delete is ignored).
                            if let Err(e) = self
                                .manager
                                .store
                                .delete(&layout::renew_request(&self.cert.id))
                                .await
                            {
                                debug!(error = %e, "could not remove the renewal request");
                            }
                        }
                        renew.serial = None;
                        if let Err(e) = self.deploy(&bundle, deployed_serial) {
                            warn!(error = %e, "new certificate cannot be served");
                        } else {
                            self.resolved("a servable certificate is stored again");
                        }
                        self.record(CertState::Valid, None, 0, None, Some(lease))
                            .await;
                        Duration::ZERO
                    }
                    Err(e) => {
                        // Lease lost (we stalled past the TTL) or the store failed: never serve
                        // a certificate that is not durably stored; a peer may have one.
                        warn!(error = %e, "could not store the new certificate; discarding it");
                        // Refused too when the lease was lost: the status is the new holder's.
                        self.attempt_failed(backoff, &e, lease).await
                    }
                }
            }
            Err(e) => {
                let delay = self.attempt_failed(backoff, &e, lease).await;
                warn!(error = %e, failures = backoff.failures(), retry_in_secs = delay.as_secs(), "obtaining the certificate failed");
                delay
            }
        }
    }

    /// The pending renewal request for this certificate, if any (unreadable ones are ignored).
    async fn load_renew_request(&self) -> Option<RenewRequest> {
        let key = layout::renew_request(&self.cert.id);
        match self.manager.store.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                debug!(error = %e, "cannot read the renewal request");
                None
            }
        }
    }

    /// Whether a renewal request (re-read now, under the lease) asks to replace `bundle`.
    async fn renewal_requested_for(&self, bundle: &CertBundle) -> bool {
        self.load_renew_request()
            .await
            .is_some_and(|r| r.serial == bundle.meta.serial)
    }

    async fn obtain(&self, current: Option<&CertBundle>) -> Result<CertBundle> {
        match &self.cert.source {
            CertSource::Acme(settings) => {
                let issuer = self.manager.issuer(settings);
                let limiter = &self.manager.limiter;
                limiter
                    .reserve_order(issuer.ca_id(), &self.cert.domains)
                    .await?;
                let result = issuer
                    .issue(&self.cert.domains, self.cert.key_type, current)
                    .await;
                match &result {
                    Ok(_) => limiter.record_issued(&self.cert.domains).await,
                    Err(Error::Validation { domain, .. }) => {
                        limiter.record_failed_validation(domain).await
                    }
                    Err(_) => {}
                }
                result
            }
            CertSource::Internal => {
                self.manager
                    .internal
                    .issue(&self.cert.domains, self.cert.key_type)
                    .await
            }
            CertSource::Files { cert, key } => files::load(cert, key),
        }
    }

    /// Refresh the ARI window when it is time; returns when to look next (None without ARI).
    async fn maybe_check_ari(&self, bundle: &CertBundle, now: i64) -> Option<i64> {
        let CertSource::Acme(settings) = &self.cert.source else {
            return None;
        };
        if let Some(next) = bundle.meta.ari_next_check
            && next > now
        {
            return Some(next);
        }
        let issuer = self.manager.issuer(settings);
        match issuer.renewal_window(bundle).await {
            Ok(Some(window)) => {
                let mut updated = bundle.clone();
                updated.meta.ari_window = Some((window.start, window.end));
                updated.meta.ari_checked_at = Some(now);
                let next =
                    renewal::next_ari_check(now, Some(window.retry_after_secs), fastrand::f64());
                updated.meta.ari_next_check = Some(next);
                if let Some(key) = self.cert.storage_key() {
                    // Metadata only; a race with a peer's identical refresh is harmless.
                    if let Err(e) = self.manager.store.put(&key, &updated.to_json()).await {
                        debug!(error = %e, "could not store the ARI window");
                    }
                }
                Some(next)
            }
            Ok(None) => None,
            Err(e) => {
                debug!(error = %e, "ARI check failed; using the lifetime rule until the next check");
                Some(renewal::next_ari_check(now, None, fastrand::f64()))
            }
        }
    }

    /// When the last attempt recorded in the store failed on a peer (or on an earlier run of
    /// this node) and its backoff has not run out: how long is left. The recorded failure count
    /// is carried into `backoff`, so the backoff escalates across the cluster. A failure of this
    /// task itself is `backoff`'s business alone (a kick retries it at once).
    async fn peer_backoff(&self, backoff: &mut Backoff) -> Option<Duration> {
        let bytes = self
            .manager
            .store
            .get(&layout::status(&self.cert.id))
            .await
            .ok()??;
        let record: StatusRecord = serde_json::from_slice(&bytes).ok()?;
        if record.state != CertState::Failing
            || (record.node == self.manager.node && backoff.failures() > 0)
        {
            return None;
        }
        // The schedule's last step is reached after a handful of failures; no need to count on.
        while backoff.failures() < record.failures.min(PEER_FAILURES_CARRIED) {
            backoff.record_failure();
        }
        let left = record.next_attempt? - now_unix();
        u64::try_from(left)
            .ok()
            .filter(|l| *l > 0)
            .map(Duration::from_secs)
    }

    /// Counts a failed attempt made under `lease` and records the `Failing` status (fenced by
    /// the lease); returns the delay before the next attempt.
    async fn attempt_failed(
        &self,
        backoff: &mut Backoff,
        error: &Error,
        lease: &store::Lease,
    ) -> Duration {
        backoff.record_failure();
        let delay = backoff.delay_for(error, fastrand::f64());
        self.record(
            CertState::Failing,
            Some(error),
            backoff.failures(),
            Some(delay),
            Some(lease),
        )
        .await;
        delay
    }

    /// Write the status record `fleetgate certs` shows. `lease`: the certificate's lease this
    /// task holds, if it does; the record is then written under it (fenced), so a holder that
    /// lost its lease cannot overwrite the status the new holder recorded.
    async fn record(
        &self,
        state: CertState,
        error: Option<&Error>,
        failures: u32,
        retry_in: Option<Duration>,
        lease: Option<&store::Lease>,
    ) {
        let summary = (state, error.map(|e| e.to_string()), failures);
        if lock(&self.last_record).as_ref() == Some(&summary) {
            return;
        }
        let now = now_unix();
        let record = StatusRecord {
            state,
            updated_at: now,
            node: self.manager.node.clone(),
            next_attempt: retry_in.map(|d| now + d.as_secs() as i64),
            failures,
            last_error: error.map(|e| LastError {
                at: now,
                message: e.to_string(),
                problem: match e {
                    Error::Acme { problem }
                    | Error::RateLimited { problem, .. }
                    | Error::Validation { problem, .. } => Some(problem.clone()),
                    _ => None,
                },
            }),
        };
        let bytes = match serde_json::to_vec(&record) {
            Ok(b) => b,
            Err(_) => return,
        };
        let key = layout::status(&self.cert.id);
        let written = match lease {
            Some(lease) => self.manager.store.put_fenced(&key, &bytes, lease).await,
            None => self.manager.store.put(&key, &bytes).await,
        };
        match written {
            // Remembered only once written: a failed write is tried again next time.
            Ok(()) => *lock(&self.last_record) = Some(summary),
            Err(e) => debug!(error = %e, "could not record the certificate's status"),
        }
    }
}

fn join(findings: &[Finding]) -> String {
    let parts: Vec<String> = findings.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// What a task knows of the renewal request for its certificate.
struct RenewWanted {
    /// Read the request from the store at the next step.
    check: bool,
    /// The serial a pending request asks to replace.
    serial: Option<String>,
}

/// `poll` for up to `per` certificates, proportionally longer for more: `count` certificates
/// each looked at once a poll make no more than `per` looks a `poll`.
fn scaled_poll(poll: Duration, count: usize, per: usize) -> Duration {
    if count <= per {
        return poll;
    }
    poll.mul_f64(count as f64 / per as f64)
}

/// Which of `buckets` `id` falls in, the same on every run.
fn jitter_bucket(id: &str, buckets: usize) -> usize {
    ((jitter_seed(id) * buckets as f64) as usize).min(buckets - 1)
}

/// A stable per-certificate number in [0, 1) so every node picks the same point in a window.
fn jitter_seed(serial: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 1_000_000) as f64 / 1_000_000.0
}

fn backoff_store(backoff: &mut Backoff) -> Duration {
    // Store trouble: retry sooner than CA trouble, but never hot-loop.
    backoff.record_failure();
    Duration::from_secs(5).min(backoff.delay(fastrand::f64()))
}

/// Findings as a task keeps them until the next look: without the room the report grew into
/// (a files certificate with one warning kept 256 bytes for 64, at each of thousands of sites).
fn kept(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.shrink_to_fit();
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_stretch_beyond_their_share() {
        let second = Duration::from_secs(1);
        let per = FILES_PER_POLL;
        assert_eq!(scaled_poll(second, 0, per), second);
        assert_eq!(scaled_poll(second, per, per), second);
        assert_eq!(scaled_poll(second, 100_000, per), Duration::from_secs(10));
        assert_eq!(
            scaled_poll(second, 25_000, per),
            Duration::from_millis(2500)
        );
        let minute = Duration::from_secs(60);
        let per = ISSUED_PER_RESYNC;
        assert_eq!(scaled_poll(minute, per, per), minute);
        let stretched = scaled_poll(minute, 100_000, per).as_secs_f64();
        assert!((stretched - 1000.0).abs() < 0.001, "{stretched}");
    }
}
