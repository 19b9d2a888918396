//! A queue of items each due at an instant, taken in the order they fall due.
//!
//! The certificate manager keeps its ACME and built-in-CA certificates here instead of giving
//! each a task that sleeps until its next look: a node may hold 100,000 of them, and a task
//! costs about a kilobyte. An item is pushed with a sequence number; pushing it again (sooner,
//! say) leaves the earlier entry in the heap, and the taker's `take` check drops it as stale
//! when it falls due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::collections::binary_heap::PeekMut;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::lock;

struct Entry<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed: `BinaryHeap` is a max-heap, and the earliest entry must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Items by due time, for one taker ([`DueQueue::next`]) and any number of pushers.
pub(crate) struct DueQueue<T> {
    heap: Mutex<BinaryHeap<Entry<T>>>,
    /// Something was pushed ahead of what the taker waits for.
    wake: Notify,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        DueQueue {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
        }
    }
}

impl<T> DueQueue<T> {
    /// Make `item` due at `at`. `seq` tells this entry from earlier ones for the same item.
    pub(crate) fn push(&self, at: Instant, seq: u64, item: T) {
        let mut heap = lock(&self.heap);
        let sooner = heap.peek().is_none_or(|first| at < first.at);
        heap.push(Entry { at, seq, item });
        drop(heap);
        if sooner {
            self.wake.notify_one();
        }
    }

    /// Wait for the next entry that is due and that `take` accepts; entries it refuses are
    /// dropped. `take` runs with the queue locked: it must not push.
    pub(crate) async fn next(&self, take: impl Fn(&T, u64) -> bool) -> T {
        loop {
            let wait = {
                let mut heap = lock(&self.heap);
                loop {
                    let Some(first) = heap.peek_mut() else {
                        break None;
                    };
                    if first.at > Instant::now() {
                        break Some(first.at);
                    }
                    let entry = PeekMut::pop(first);
                    if take(&entry.item, entry.seq) {
                        return entry.item;
                    }
                }
            };
            match wait {
                None => self.wake.notified().await,
                Some(at) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }

    /// How many entries the heap holds, stale ones included.
    pub(crate) fn len(&self) -> usize {
        lock(&self.heap).len()
    }

    /// Drop the entries `current` refuses (stale ones, before they fall due). `current` runs
    /// with the queue locked: it must not push.
    pub(crate) fn retain(&self, current: impl Fn(&T, u64) -> bool) {
        lock(&self.heap).retain(|entry| current(&entry.item, entry.seq));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn items_come_out_in_due_order_and_stale_ones_are_dropped() {
        let queue = DueQueue::default();
        let now = Instant::now();
        queue.push(now + Duration::from_secs(3), 0, "c");
        queue.push(now + Duration::from_secs(1), 0, "a");
        queue.push(now + Duration::from_secs(2), 0, "b");
        // "a" again, later: the first entry for it is now stale.
        queue.push(now + Duration::from_secs(4), 1, "a");
        let current = |item: &&str, seq: u64| *item != "a" || seq == 1;
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(queue.next(current).await);
            assert!(Instant::now() >= now + Duration::from_secs(order.len() as u64 + 1));
        }
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_push_wakes_the_taker() {
        let queue = std::sync::Arc::new(DueQueue::default());
        let start = Instant::now();
        queue.push(start + Duration::from_secs(3600), 0, 1);
        let taker = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next(|_, _| true).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        queue.push(Instant::now(), 0, 2);
        assert_eq!(taker.await.ok(), Some(2));
        assert!(Instant::now() < start + Duration::from_secs(3600));
    }

    #[test]
    fn retain_drops_what_is_not_current() {
        let queue = DueQueue::default();
        let now = Instant::now();
        for i in 0..10u64 {
            queue.push(now, i, i);
        }
        queue.retain(|item, _| item % 2 == 0);
        assert_eq!(queue.len(), 5);
    }
}
