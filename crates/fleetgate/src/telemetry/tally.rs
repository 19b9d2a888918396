//! Counters and histograms for the request path, cheaper than the `metrics` facade's: every
//! thread counts into its own cache line (a shard), so two threads serving the same site never
//! contend on one atomic, and a histogram is a fixed set of bucket counters (no sample list
//! folded later). A scrape sums the shards ([`Tally::read`]) and renders the Prometheus text
//! itself ([`render_counter`], [`render_histogram`]).
//!
//! Bench scenario 7 measured the `metrics` facade's handles (a shared counter and an
//! `AtomicBucket` histogram per site) at 6-7 % of the HTTP redirect's throughput with two
//! threads; this is what replaced them.

use std::cell::Cell;
use std::fmt::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Slots a [`Tally`] counts into: `N` plain counters, the histogram's buckets (one per bound,
/// then `+Inf`), and the sum of the observed durations in nanoseconds.
#[derive(Debug)]
#[repr(align(128))]
struct Shard<const N: usize, const B: usize> {
    counters: [AtomicU64; N],
    buckets: [AtomicU64; B],
    sum_nanos: AtomicU64,
}

impl<const N: usize, const B: usize> Default for Shard<N, B> {
    fn default() -> Self {
        Shard {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// `N` counters and a histogram with `B - 1` bounds (`B` buckets with `+Inf`), sharded by
/// thread. The shards are allocated at the first count, so a site that gets no traffic costs
/// only this struct.
#[derive(Debug)]
pub struct Tally<const N: usize, const B: usize> {
    bounds: &'static [u64; B],
    shards: OnceLock<Box<[Shard<N, B>]>>,
}

/// What a scrape reads from a [`Tally`]: the counters summed over the shards, the buckets (not
/// cumulative), the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals<const N: usize, const B: usize> {
    pub counters: [u64; N],
    pub buckets: [u64; B],
    pub sum_seconds: f64,
}

/// How many shards: the machine's threads, rounded up to a power of two (at most 16).
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(16)
    })
}

/// This thread's shard number (taken at its first count, in order, so the first threads that
/// serve requests, the runtime's workers, get shards of their own).
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(n) => n,
        None => {
            let n = NEXT.fetch_add(1, Relaxed);
            shard.set(Some(n));
            n
        }
    })
}

impl<const N: usize, const B: usize> Tally<N, B> {
    /// `bounds`: the buckets' upper bounds in nanoseconds, ascending, the last `u64::MAX`
    /// (`+Inf`).
    pub const fn new(bounds: &'static [u64; B]) -> Self {
        Tally {
            bounds,
            shards: OnceLock::new(),
        }
    }

    fn shard(&self) -> &Shard<N, B> {
        let shards = self
            .shards
            .get_or_init(|| (0..shard_count()).map(|_| Shard::default()).collect());
        &shards[thread_shard() & (shards.len() - 1)]
    }

    /// Count one event in counter `counter` (when given) and one observation of `elapsed`.
    #[inline]
    pub fn record(&self, counter: Option<usize>, elapsed: Duration) {
        let shard = self.shard();
        if let Some(i) = counter {
            shard.counters[i].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds.partition_point(|&bound| bound < nanos);
        shard.buckets[bucket.min(B - 1)].fetch_add(1, Relaxed);
        shard.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// The sums over the shards; `None` before the first count.
    pub fn read(&self) -> Option<Totals<N, B>> {
        let shards = self.shards.get()?;
        let mut totals = Totals {
            counters: [0; N],
            buckets: [0; B],
            sum_seconds: 0.0,
        };
        let mut sum_nanos: u64 = 0;
        for shard in shards.iter() {
            for (total, c) in totals.counters.iter_mut().zip(&shard.counters) {
                *total += c.load(Relaxed);
            }
            for (total, b) in totals.buckets.iter_mut().zip(&shard.buckets) {
                *total += b.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Relaxed));
        }
        totals.sum_seconds = sum_nanos as f64 / 1e9;
        Some(totals)
    }
}

/// Bucket bounds in nanoseconds from bounds in seconds, `+Inf` last.
pub const fn bounds_nanos<const B: usize>(seconds_times_10000: [u64; B]) -> [u64; B] {
    let mut out = [u64::MAX; B];
    let mut i = 0;
    while i + 1 < B {
        out[i] = seconds_times_10000[i] * 100_000;
        i += 1;
    }
    out
}

/// A label value as the text format wants it (`\`, `"` and newlines escaped).
pub fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// `# HELP` and `# TYPE` of one metric.
pub fn render_head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample of a counter: `name{labels} value`; `labels` already rendered (`a="x",b="y"`).
pub fn render_counter(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// The samples of one histogram: cumulative `_bucket`s with `le`, `_sum`, `_count`.
pub fn render_histogram<const B: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[u64; B],
    buckets: &[u64; B],
    sum_seconds: f64,
) {
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(buckets) {
        cumulative += count;
        let le = if *bound == u64::MAX {
            "+Inf".to_string()
        } else {
            (*bound as f64 / 1e9).to_string()
        };
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_seconds}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// 1 ms, 10 ms, +Inf.
    static BOUNDS: [u64; 3] = bounds_nanos([10, 100, 0]);

    #[test]
    fn records_from_several_threads_sum_up() {
        let tally: &'static Tally<2, 3> = Box::leak(Box::new(Tally::new(&BOUNDS)));
        assert_eq!(tally.read(), None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        tally.record(Some(0), Duration::from_micros(500));
                        tally.record(Some(1), Duration::from_millis(5));
                        tally.record(None, Duration::from_secs(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let totals = tally.read().unwrap();
        assert_eq!(totals.counters, [4000, 4000]);
        assert_eq!(totals.buckets, [4000, 4000, 4000]);
        assert!((totals.sum_seconds - 4000.0 * 1.0055).abs() < 1e-6);
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let tally: Tally<0, 3> = Tally::new(&BOUNDS);
        tally.record(None, Duration::from_millis(1));
        tally.record(None, Duration::from_millis(10));
        tally.record(None, Duration::from_nanos(10_000_001));
        assert_eq!(tally.read().unwrap().buckets, [1, 1, 1]);
    }

    #[test]
    fn histogram_text_is_cumulative_with_inf_and_count() {
        let mut out = String::new();
        render_histogram(&mut out, "h", "site=\"a\"", &BOUNDS, &[1, 2, 3], 0.5);
        assert_eq!(
            out,
            "h_bucket{site=\"a\",le=\"0.001\"} 1\nh_bucket{site=\"a\",le=\"0.01\"} 3\n\
             h_bucket{site=\"a\",le=\"+Inf\"} 6\nh_sum{site=\"a\"} 0.5\nh_count{site=\"a\"} 6\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a.example"), "a.example");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
