//! Change events from other nodes: one `LISTEN fleetgate_changes` connection per store, kept
//! alive (pinged) and reconnected with jittered backoff when it fails.
//!
//! Writers send `pg_notify('fleetgate_changes', '<op>:<origin>:<key>')` in the same statement as
//! the write, so a notification goes out exactly when the write commits. `<op>` is `P` (put) or
//! `D` (delete); `<origin>` is the writing store's random id. A store reports its own writes
//! directly and skips notifications of its own origin, so it sees each of them once, also while
//! this connection is down.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

use super::tls::DbTls;

use crate::backoff::Backoff;
use crate::{Change, StorageKey};

/// The notification channel.
pub(super) const CHANNEL: &str = "fleetgate_changes";

/// The reconnect schedule (see `crate::backoff`): doubling from `FIRST` up to `MAX`, jittered to
/// `[d/2, d]`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle listener checks that its connection still answers (a frozen or
/// unreachable server sends no error, only silence).
const PING_EVERY: Duration = Duration::from_secs(10);

/// The payload of a notification for `change` made by the store `origin`.
pub(super) fn payload(origin: &str, change: &Change) -> String {
    match change {
        Change::Put(key) => format!("P:{origin}:{key}"),
        Change::Deleted(key) => format!("D:{origin}:{key}"),
        // Raised locally only; a peer that gets one ignores it (not a P or D payload).
        Change::Missed => format!("M:{origin}:"),
    }
}

/// The change in a notification payload, unless it is malformed or `origin` is ours.
fn parse(payload: &str, ours: &str) -> Option<Change> {
    let mut parts = payload.splitn(3, ':');
    let (op, origin, key) = (parts.next()?, parts.next()?, parts.next()?);
    if origin == ours {
        return None;
    }
    let key = StorageKey::new(key).ok()?;
    match op {
        "P" => Some(Change::Put(key)),
        "D" => Some(Change::Deleted(key)),
        _ => None,
    }
}

/// Aborts the task when dropped.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What forwards notifications: the broadcast channel and the id of this store's own writes.
#[derive(Clone)]
pub(super) struct Forward {
    pub(super) events: broadcast::Sender<Change>,
    pub(super) origin: String,
}

/// One listening connection: the client and the task that drives the connection.
pub(super) struct Session {
    client: Client,
    driver: AbortOnDrop<Result<(), tokio_postgres::Error>>,
}

impl Session {
    /// Connect and `LISTEN`. Notifications committed after this returns are forwarded.
    pub(super) async fn open(
        config: &tokio_postgres::Config,
        tls: &DbTls,
        forward: &Forward,
    ) -> Result<Session, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(tls.clone()).await?;
        let forward = forward.clone();
        let driver = AbortOnDrop(tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        if let Some(change) = parse(n.payload(), &forward.origin) {
                            // An error only means nobody is subscribed.
                            let _ = forward.events.send(change);
                        }
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(notice = %notice.message(), "PostgreSQL notice");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        }));
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(Session { client, driver })
    }
}

/// Keep a session listening until the task is aborted: supervise `first` (or, without one,
/// connect first), and whenever the connection is lost, reconnect with backoff (each attempt
/// bounded by `timeout`).
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: DbTls,
    forward: Forward,
    first: Option<Session>,
    timeout: Duration,
) {
    let mut connected_before = first.is_some();
    let mut session = first;
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    loop {
        let current = match session.take() {
            Some(s) => s,
            None => {
                match tokio::time::timeout(timeout, Session::open(&config, &tls, &forward)).await {
                    Ok(Ok(s)) => {
                        if connected_before {
                            tracing::info!(
                                "change listener reconnected; subscribers re-read what changed \
                                 while it was down"
                            );
                        } else {
                            tracing::debug!("change listener connected");
                        }
                        // Notifications sent before this LISTEN are gone: say so.
                        let _ = forward.events.send(Change::Missed);
                        connected_before = true;
                        backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
                        s
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "change listener could not reconnect");
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                    Err(_) => {
                        tracing::debug!(?timeout, "change listener reconnect timed out");
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
        };
        let reason = supervise(current, timeout).await;
        tracing::warn!(%reason, "change listener lost its connection; reconnecting");
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Wait until `session` fails: its connection ends, or a ping gets no answer within `timeout`.
async fn supervise(mut session: Session, timeout: Duration) -> String {
    loop {
        tokio::select! {
            ended = &mut session.driver.0 => {
                return match ended {
                    Ok(Ok(())) => "connection closed".into(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("driver task failed: {e}"),
                };
            }
            () = tokio::time::sleep(PING_EVERY) => {
                match tokio::time::timeout(timeout, session.client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("ping not answered within {timeout:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn payloads_round_trip_and_skip_own_origin() {
        let key = StorageKey::new("certs/a_b/x.json").unwrap();
        for change in [Change::Put(key.clone()), Change::Deleted(key.clone())] {
            let p = payload("n1", &change);
            assert_eq!(parse(&p, "n2"), Some(change));
            assert_eq!(parse(&p, "n1"), None);
        }
        assert_eq!(parse("X:n1:a", "n2"), None);
        assert_eq!(parse("P:n1:../etc", "n2"), None);
        assert_eq!(parse("garbage", "n2"), None);
    }
}
