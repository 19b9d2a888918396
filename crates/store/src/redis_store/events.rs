//! Change events over Redis pub/sub.
//!
//! Every write script publishes `<origin> put <key>` or `<origin> del <key>` on the channel
//! `<prefix>changes`, atomically with the write. `origin` names the [`super::RedisStore`] that
//! wrote: a store reports its own writes to its subscribers directly (so they arrive even while
//! its subscription is down) and skips its own messages from the channel.
//!
//! One task per store holds a dedicated pub/sub connection, checks it with `PING` every
//! [`HEALTH_EVERY`] (a connection that stopped answering, e.g. a frozen server or a silent
//! network partition, is dropped), and reconnects with jittered backoff. Pub/sub is
//! fire-and-forget: messages published while the subscription is down are lost, which is why
//! subscribers also resync periodically (see [`crate::Storage::subscribe`]).

use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{broadcast, watch};

use crate::backoff::Backoff;
use crate::{Change, StorageKey};

/// How often the subscription connection is checked with `PING`.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// The reconnect schedule (see `crate::backoff`): doubling from `FIRST` up to `MAX`, jittered to
/// `[d/2, d]`.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

const PUT: &str = "put";
const DELETED: &str = "del";

/// The pub/sub message for `change` written by `origin`.
pub(super) fn encode(origin: &str, change: &Change) -> String {
    match change {
        Change::Put(key) => format!("{origin} {PUT} {key}"),
        Change::Deleted(key) => format!("{origin} {DELETED} {key}"),
        // Raised locally only; a peer that gets one ignores it (neither PUT nor DELETED).
        Change::Missed => format!("{origin} missed"),
    }
}

/// The origin and change in a message, or `None` if it is not one of ours.
fn decode(payload: &[u8]) -> Option<(&str, Change)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ' ');
    let (origin, op, key) = (parts.next()?, parts.next()?, parts.next()?);
    let key = StorageKey::new(key).ok()?;
    let change = match op {
        PUT => Change::Put(key),
        DELETED => Change::Deleted(key),
        _ => return None,
    };
    Some((origin, change))
}

/// What the subscriber task needs.
pub(super) struct Subscriber {
    pub client: redis::Client,
    pub channel: String,
    pub origin: String,
    pub events: broadcast::Sender<Change>,
    /// `true` while subscribed.
    pub subscribed: watch::Sender<bool>,
    /// Bound on connecting, subscribing and each health check.
    pub timeout: Duration,
}

impl Subscriber {
    /// Subscribe, forward, reconnect; forever (the store aborts the task when dropped).
    pub async fn run(self) {
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        let mut failures = 0u32;
        let mut lost_before = false;
        loop {
            match self.connect().await {
                Ok((sink, stream)) => {
                    if failures > 0 || lost_before {
                        tracing::info!(channel = %self.channel, "change subscription restored");
                        // Messages published while unsubscribed are gone: say so.
                        let _ = self.events.send(Change::Missed);
                    }
                    failures = 0;
                    backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
                    self.subscribed.send_replace(true);
                    let reason = self.forward(sink, stream).await;
                    self.subscribed.send_replace(false);
                    lost_before = true;
                    tracing::warn!(
                        channel = %self.channel,
                        %reason,
                        "change subscription lost; reconnecting"
                    );
                }
                Err(reason) => {
                    failures += 1;
                    // Loud once per outage, quiet while it lasts.
                    if failures == 1 {
                        tracing::warn!(
                            channel = %self.channel,
                            %reason,
                            "cannot subscribe to changes; retrying"
                        );
                    } else {
                        tracing::debug!(
                            channel = %self.channel,
                            %reason,
                            failures,
                            "cannot subscribe to changes; retrying"
                        );
                    }
                }
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        match tokio::time::timeout(self.timeout, subscribe).await {
            Ok(Ok(split)) => Ok(split),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    /// Forward messages until the connection fails; returns why it stopped.
    async fn forward(&self, mut sink: PubSubSink, mut stream: PubSubStream) -> String {
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await; // The first tick is immediate.
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return "connection closed".to_string();
                    };
                    self.deliver(msg.get_payload_bytes());
                }
                _ = health.tick() => {
                    match tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("PING failed: {e}"),
                        Err(_) => return format!("PING unanswered for {:?}", self.timeout),
                    }
                }
            }
        }
    }
}

impl Subscriber {
    /// Pass a message on to this store's subscribers, unless this store wrote it.
    fn deliver(&self, payload: &[u8]) {
        match decode(payload) {
            Some((origin, _)) if origin == self.origin => {}
            Some((_, change)) => {
                // An error only means nobody is subscribed.
                let _ = self.events.send(change);
            }
            None => tracing::debug!(channel = %self.channel, "ignoring a foreign message"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn messages_round_trip() {
        let key = StorageKey::new("certs/acme/example.com.json").unwrap();
        for change in [Change::Put(key.clone()), Change::Deleted(key)] {
            let msg = encode("0123abcd", &change);
            assert_eq!(decode(msg.as_bytes()), Some(("0123abcd", change)));
        }
        assert_eq!(decode(b"x frob a/b"), None);
        assert_eq!(decode(b"x put ../a"), None);
        assert_eq!(decode(b"x put"), None);
        assert_eq!(decode(&[0xff, b' ', b'p']), None);
    }
}
