//! The fleet's TLS session ticket keys, so that a browser the balancer sends to another node
//! resumes its session there.
//!
//! One object in the store, `tls-tickets/keys.json` (sealed like private keys when a sealing key
//! is set), holds three keys: `previous` (opens tickets made before the last rotation),
//! `current` (seals new tickets) and `next` (published a full period before it seals, so every
//! node can open its tickets by the time any node makes one). Whichever node first finds the set
//! due (`tls.ticket_key_rotation` after the last rotation, 12 h by default) rotates it under the
//! `tls-tickets` lease, re-reading first and writing with `put_fenced`: next becomes current,
//! current previous, and a new next is made. A ticket therefore opens for at least one period
//! after it was made; clients are told that period as its lifetime.
//!
//! Every node follows the object through the store's change events (a lost batch, every resync
//! and every [`RETRY`] while the store does not answer: read again) and swaps the keys into its
//! edge live ([`edge::TicketKeys::set`]). A node keeps its last keys while the store is down; one
//! that never reached it seals with a key of its own (rotated locally on the same schedule),
//! which it keeps opening until the fleet's set rotates once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use edge::{TICKET_KEY_ID_LEN, TICKET_SECRET_LEN, TicketKey, TicketKeys};
use serde::{Deserialize, Serialize};
use store::{Change, LockHolder, Storage};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long the rotating node holds the lease: a read and a write.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// The bound on each store call of the follower (backends bound theirs too).
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node whose keys are stale (the store did not answer, or another node held the
/// lease while the set was due) reads again.
const RETRY: Duration = Duration::from_secs(2);

/// The stored form of the fleet's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKeys {
    /// 1 for the first set, one more at every rotation.
    pub generation: u64,
    /// When this set was written (Unix seconds, by the writer's clock).
    pub rotated_at: u64,
    /// The node that wrote it.
    pub rotated_by: String,
    pub previous: Option<StoredKey>,
    pub current: StoredKey,
    pub next: StoredKey,
}

/// One key: id and secret in lowercase hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    id: String,
    secret: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl StoredKey {
    fn of(key: &TicketKey) -> StoredKey {
        StoredKey {
            id: key.id_hex(),
            secret: hex(key.secret()),
        }
    }

    fn generate() -> anyhow::Result<StoredKey> {
        Ok(StoredKey::of(&TicketKey::generate()?))
    }

    fn ticket_key(&self) -> anyhow::Result<TicketKey> {
        let id: [u8; TICKET_KEY_ID_LEN] = unhex(&self.id).context("key id")?;
        let secret: [u8; TICKET_SECRET_LEN] = unhex(&self.secret).context("key secret")?;
        Ok(TicketKey::new(id, secret)?)
    }
}

impl StoredKeys {
    /// The id of the key sealing new tickets (hex).
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// The first set: no previous key.
    fn first(node: &str, now: u64) -> anyhow::Result<StoredKeys> {
        Ok(StoredKeys {
            generation: 1,
            rotated_at: now,
            rotated_by: node.to_string(),
            previous: None,
            current: StoredKey::generate()?,
            next: StoredKey::generate()?,
        })
    }

    /// The set after this one: next seals, current only opens, a new next.
    fn rotated(&self, node: &str, now: u64) -> anyhow::Result<StoredKeys> {
        Ok(StoredKeys {
            generation: self.generation.saturating_add(1),
            rotated_at: now,
            rotated_by: node.to_string(),
            previous: Some(self.current.clone()),
            current: self.next.clone(),
            next: StoredKey::generate()?,
        })
    }

    /// How long until this set is due for rotation (zero: due now).
    fn due_in(&self, period: Duration, now: u64) -> Duration {
        let due_at = self.rotated_at.saturating_add(period.as_secs());
        Duration::from_secs(due_at.saturating_sub(now))
    }

    /// The edge's keys: current seals; previous and next open.
    fn edge_keys(&self) -> anyhow::Result<(TicketKey, Vec<TicketKey>)> {
        let current = self.current.ticket_key().context("current")?;
        let mut others = vec![self.next.ticket_key().context("next")?];
        if let Some(previous) = &self.previous {
            others.push(previous.ticket_key().context("previous")?);
        }
        Ok((current, others))
    }

    fn parse(bytes: &[u8]) -> anyhow::Result<StoredKeys> {
        let keys: StoredKeys = serde_json::from_slice(bytes)?;
        // Every key must be usable before the set is.
        keys.edge_keys()?;
        Ok(keys)
    }
}

/// The fleet's keys as stored; `None` before the first set was written.
pub async fn read(store: &dyn Storage) -> anyhow::Result<Option<StoredKeys>> {
    let key = certs::layout::ticket_keys();
    let Some(bytes) = store.get(&key).await? else {
        return Ok(None);
    };
    StoredKeys::parse(&bytes).map(Some).with_context(|| {
        format!(
            "{key} is not a usable set of ticket keys (`fleetgate tickets rotate` writes a new one)"
        )
    })
}

/// What [`rotate`] did.
#[derive(Debug)]
pub enum Rotation {
    /// This node wrote a new set.
    Rotated(StoredKeys),
    /// After taking the lease, the stored set was found not due (another node rotated it).
    NotDue(StoredKeys),
    /// Another node holds the lease (and is rotating).
    Busy(LockHolder),
}

/// When [`rotate`] writes a new set.
#[derive(Debug, Clone, Copy)]
pub enum When {
    /// Only if there is none, or the stored one is at least this old.
    Due(Duration),
    /// Now (`fleetgate tickets rotate`); a stored set that cannot be read is replaced.
    Now,
}

/// Rotate the fleet's keys under the `tls-tickets` lease: take it (or say who holds it), re-read
/// the set, write the next one with `put_fenced` if `when` says so, release the lease.
pub async fn rotate(store: &dyn Storage, node: &str, when: When) -> anyhow::Result<Rotation> {
    let lock = certs::layout::ticket_keys_lock();
    let lease = match store.try_lock(&lock, node, LEASE_TTL).await? {
        Ok(lease) => lease,
        Err(holder) => return Ok(Rotation::Busy(holder)),
    };
    let result = async {
        let old = match (read(store).await, when) {
            (Ok(old), _) => old,
            (Err(e), When::Now) => {
                warn!(error = %format!("{e:#}"), "replacing the stored ticket keys");
                None
            }
            (Err(e), When::Due(_)) => return Err(e),
        };
        let now = unix_now();
        if let (Some(old), When::Due(period)) = (&old, when)
            && !old.due_in(period, now).is_zero()
        {
            return Ok(Rotation::NotDue(old.clone()));
        }
        let new = match &old {
            Some(old) => old.rotated(node, now)?,
            None => StoredKeys::first(node, now)?,
        };
        let bytes = serde_json::to_vec(&new)?;
        store
            .put_fenced(&certs::layout::ticket_keys(), &bytes, &lease)
            .await?;
        Ok(Rotation::Rotated(new))
    }
    .await;
    if let Err(e) = store.unlock(&lease).await {
        warn!(error = %e, "cannot release the ticket keys' lease (it expires by itself)");
    }
    result
}

/// Follow the fleet's keys in a task of its own and keep `keys` (the edge's) in step: read them
/// now, on every change event for them (all of them on a lost batch), every `resync`, every
/// [`RETRY`] while the store does not answer; rotate them when due. `events` must have been
/// subscribed before this is called, so that no change is missed.
pub fn follow(
    keys: Arc<TicketKeys>,
    store: Arc<dyn Storage>,
    node: String,
    period: Duration,
    resync: Duration,
    mut events: broadcast::Receiver<Change>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    keys.set_lifetime(period);
    let mut follower = Follower {
        keys,
        store,
        node,
        period,
        known: None,
        local: None,
        local_since: Instant::now(),
        stale: false,
    };
    follower.local = Some(follower.keys.current());
    let watched = certs::layout::ticket_keys();
    tokio::spawn(async move {
        let mut events_open = true;
        loop {
            let wait = follower.step().await.min(resync);
            let wake = tokio::time::sleep(wait);
            tokio::pin!(wake);
            // Wait for the time to read again, or an event that names the keys.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut wake => break,
                    event = events.recv(), if events_open => match event {
                        Ok(Change::Put(key) | Change::Deleted(key)) if key == watched => break,
                        Ok(Change::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Closed) => events_open = false,
                    },
                }
            }
        }
    })
}

/// The follower's state.
struct Follower {
    keys: Arc<TicketKeys>,
    store: Arc<dyn Storage>,
    node: String,
    period: Duration,
    /// The fleet's set in use; `None` while the store has not answered since start.
    known: Option<StoredKeys>,
    /// This node's own key, sealing until the fleet's set is known and opening until that set
    /// rotates once (tickets it sealed meanwhile still resume here).
    local: Option<TicketKey>,
    /// When `local` started sealing.
    local_since: Instant,
    /// The last read or rotation failed.
    stale: bool,
}

impl Follower {
    /// Read the set, rotate it if due, put it in use; how long until the next look.
    async fn step(&mut self) -> Duration {
        match tokio::time::timeout(STORE_TIMEOUT, self.read_and_rotate()).await {
            Ok(Ok(wait)) => {
                if self.stale {
                    info!("the TLS ticket keys can be read again");
                }
                self.stale = false;
                wait
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => format!("no answer within {STORE_TIMEOUT:?}"),
                };
                if !self.stale {
                    if self.known.is_some() {
                        warn!(%error, "cannot read the TLS ticket keys; keeping the last ones");
                    } else {
                        warn!(%error, "cannot read the TLS ticket keys; sealing tickets with this node's own key until the store answers");
                    }
                }
                self.stale = true;
                self.rotate_local();
                RETRY
            }
        }
    }

    async fn read_and_rotate(&mut self) -> anyhow::Result<Duration> {
        let mut stored = read(self.store.as_ref()).await?;
        // What was read is put in use first: a rotation that fails below leaves it in force.
        if let Some(stored) = &stored {
            self.apply(stored.clone())?;
        }
        let due = stored
            .as_ref()
            .is_none_or(|s| s.due_in(self.period, unix_now()).is_zero());
        if due {
            match rotate(self.store.as_ref(), &self.node, When::Due(self.period)).await {
                Ok(Rotation::Rotated(new)) => {
                    info!(
                        generation = new.generation,
                        "rotated the fleet's TLS ticket keys"
                    );
                    stored = Some(new);
                }
                Ok(Rotation::NotDue(current)) => stored = Some(current),
                // The holder is rotating: its write raises an event; look again soon anyway.
                Ok(Rotation::Busy(_)) => return Ok(RETRY),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot rotate the TLS ticket keys; trying again shortly");
                    return Ok(RETRY);
                }
            }
        }
        let Some(stored) = stored else {
            return Ok(RETRY);
        };
        let wait = stored.due_in(self.period, unix_now());
        self.apply(stored)?;
        Ok(if wait.is_zero() { RETRY } else { wait })
    }

    /// Put `stored` in use, unless it already is.
    fn apply(&mut self, stored: StoredKeys) -> anyhow::Result<()> {
        if self.known.as_ref() == Some(&stored) {
            return Ok(());
        }
        let (current, mut others) = stored.edge_keys()?;
        // This node's own key keeps opening its tickets until the fleet's set rotates once.
        if let (Some(local), Some(known)) = (&self.local, &self.known)
            && known.generation != stored.generation
        {
            info!(key = %local.id_hex(), "this node's own ticket key retired");
            self.local = None;
        }
        if let Some(local) = &self.local {
            others.push(local.clone());
        }
        info!(
            generation = stored.generation,
            current = %current.id_hex(),
            rotated_by = %stored.rotated_by,
            "TLS ticket keys from the store in use"
        );
        self.keys.set(current, others);
        self.known = Some(stored);
        Ok(())
    }

    /// A node that never read the fleet's set rotates its own key on the same schedule.
    fn rotate_local(&mut self) {
        if self.known.is_some() || self.local_since.elapsed() < self.period {
            return;
        }
        match TicketKey::generate() {
            Ok(new) => {
                let old = self.keys.current();
                info!(key = %new.id_hex(), "rotated this node's own TLS ticket key");
                self.keys.set(new.clone(), vec![old]);
                self.local = Some(new);
                self.local_since = Instant::now();
            }
            Err(e) => error!(error = %e, "cannot make a new TLS ticket key; keeping the old one"),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> anyhow::Result<[u8; N]> {
    anyhow::ensure!(
        text.len() == 2 * N && text.is_ascii(),
        "expected {} hex digits",
        2 * N
    );
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("expected {} hex digits", 2 * N))?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustls::server::ProducesTickets as _;

    use super::*;

    fn dir_store() -> (tempfile::TempDir, Arc<dyn Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let store = store::DirStore::open(dir.path().join("s")).unwrap();
        (dir, Arc::new(store))
    }

    #[test]
    fn rotation_shifts_the_keys() {
        let first = StoredKeys::first("a", 1000).unwrap();
        assert_eq!(first.generation, 1);
        assert!(first.previous.is_none());
        let second = first.rotated("b", 2000).unwrap();
        assert_eq!(second.generation, 2);
        assert_eq!(second.previous.as_ref(), Some(&first.current));
        assert_eq!(second.current, first.next);
        assert_ne!(second.next, first.next);
        assert_eq!(second.rotated_by, "b");
        let (current, others) = second.edge_keys().unwrap();
        assert_eq!(current.id_hex(), first.next.id);
        assert_eq!(others.len(), 2);
    }

    #[test]
    fn due_arithmetic() {
        let keys = StoredKeys::first("a", 1000).unwrap();
        let period = Duration::from_secs(100);
        assert_eq!(keys.due_in(period, 1000), Duration::from_secs(100));
        assert_eq!(keys.due_in(period, 1099), Duration::from_secs(1));
        assert!(keys.due_in(period, 1100).is_zero());
        assert!(keys.due_in(period, 5000).is_zero());
        // A writer's clock ahead of ours: not due before its time plus the period.
        assert_eq!(keys.due_in(period, 900), Duration::from_secs(200));
        assert_eq!(
            keys.due_in(Duration::MAX, 1000),
            Duration::from_secs(u64::MAX - 1000)
        );
    }

    #[test]
    fn bad_stored_sets_are_refused_with_a_reason() {
        let good = serde_json::to_vec(&StoredKeys::first("a", 1).unwrap()).unwrap();
        assert!(StoredKeys::parse(&good).is_ok());
        for bad in [
            &b"{"[..],
            br#"{"generation":1}"#,
            &String::from_utf8(good.clone())
                .unwrap()
                .replacen("\"secret\":\"", "\"secret\":\"zz", 1)
                .into_bytes(),
            &String::from_utf8(good.clone())
                .unwrap()
                .replacen("\"id\":\"", "\"id\":\"\u{e9}", 1)
                .into_bytes(),
        ] {
            assert!(StoredKeys::parse(bad).is_err());
        }
        assert!(unhex::<2>("0g00").is_err());
        assert!(unhex::<2>("00é").is_err());
        assert_eq!(unhex::<2>("0aFF").unwrap(), [0x0a, 0xff]);
    }

    #[test]
    fn debug_hides_secrets() {
        let keys = StoredKeys::first("a", 1).unwrap();
        let text = format!("{keys:?}");
        assert!(!text.contains(&keys.current.secret), "{text}");
    }

    #[tokio::test]
    async fn rotate_under_the_lease() {
        let (_dir, store) = dir_store();
        let period = Duration::from_secs(3600);
        let Rotation::Rotated(first) = rotate(store.as_ref(), "a", When::Due(period))
            .await
            .unwrap()
        else {
            panic!("no first set written");
        };
        // Not due yet: left alone.
        let Rotation::NotDue(same) = rotate(store.as_ref(), "b", When::Due(period))
            .await
            .unwrap()
        else {
            panic!("rotated before due");
        };
        assert_eq!(same, first);
        // Forced.
        let Rotation::Rotated(second) = rotate(store.as_ref(), "b", When::Now).await.unwrap()
        else {
            panic!("not rotated");
        };
        assert_eq!(second.generation, 2);
        assert_eq!(read(store.as_ref()).await.unwrap(), Some(second));
        // Someone else holds the lease: nothing written.
        let lease = store
            .try_lock(&certs::layout::ticket_keys_lock(), "c", LEASE_TTL)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            rotate(store.as_ref(), "a", When::Now).await.unwrap(),
            Rotation::Busy(_)
        ));
        store.unlock(&lease).await.unwrap();
        // A corrupt set stops scheduled rotation and is replaced by a forced one.
        store
            .put(&certs::layout::ticket_keys(), b"not json")
            .await
            .unwrap();
        assert!(
            rotate(store.as_ref(), "a", When::Due(period))
                .await
                .is_err()
        );
        let Rotation::Rotated(fresh) = rotate(store.as_ref(), "a", When::Now).await.unwrap() else {
            panic!("not replaced");
        };
        assert_eq!(fresh.generation, 1);
    }

    #[tokio::test]
    async fn sealed_at_rest_like_private_keys() {
        let (_dir, inner) = dir_store();
        let seal = store::SealKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealed: Arc<dyn Storage> = Arc::new(store::SealedStore::new(
            inner.clone(),
            &seal,
            certs::layout::sealed_prefixes(),
        ));
        let Rotation::Rotated(keys) = rotate(sealed.as_ref(), "a", When::Now).await.unwrap() else {
            panic!("not rotated");
        };
        let raw = inner
            .get(&certs::layout::ticket_keys())
            .await
            .unwrap()
            .unwrap();
        assert!(raw.starts_with(b"FGSEAL1"));
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(&keys.current.secret) && !text.contains("generation"));
        assert_eq!(read(sealed.as_ref()).await.unwrap(), Some(keys));
    }

    #[tokio::test]
    async fn followers_share_keys_and_swap_them_live() {
        let (_dir, store) = dir_store();
        let shutdown = CancellationToken::new();
        let (a, b) = (
            Arc::new(TicketKeys::new().unwrap()),
            Arc::new(TicketKeys::new().unwrap()),
        );
        let period = Duration::from_secs(3600);
        for (keys, node) in [(&a, "a"), (&b, "b")] {
            follow(
                keys.clone(),
                store.clone(),
                node.into(),
                period,
                Duration::from_secs(60),
                store.subscribe(),
                shutdown.clone(),
            );
        }
        let deadline = Duration::from_secs(10);
        testkit::wait_for_ok("both nodes on the stored key", deadline, || {
            let (a, b, store) = (a.clone(), b.clone(), store.clone());
            async move {
                let stored = read(store.as_ref()).await?.context("no set yet")?;
                anyhow::ensure!(a.current().id_hex() == stored.current.id);
                anyhow::ensure!(b.current().id_hex() == stored.current.id);
                Ok(())
            }
        })
        .await
        .unwrap();
        let ticket = a.encrypt(b"state").unwrap();
        assert_eq!(b.decrypt(&ticket).unwrap(), b"state");
        let Rotation::Rotated(second) = rotate(store.as_ref(), "cli", When::Now).await.unwrap()
        else {
            panic!("not rotated");
        };
        testkit::wait_for_ok("both nodes on the rotated key", deadline, || {
            let (a, b, id) = (a.clone(), b.clone(), second.current.id.clone());
            async move {
                anyhow::ensure!(a.current().id_hex() == id && b.current().id_hex() == id);
                Ok(())
            }
        })
        .await
        .unwrap();
        // Made before the rotation: still opens on both.
        assert_eq!(a.decrypt(&ticket).unwrap(), b"state");
        assert_eq!(b.decrypt(&ticket).unwrap(), b"state");
        shutdown.cancel();
    }
}
