//! CertMap semantics without a network: lookups, replacement, precedence, removal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use edge::{CertMap, EdgeError};

#[test]
fn exact_then_one_label_wildcard_ignoring_case_and_trailing_dot() {
    let ca = Ca::new();
    let map = CertMap::new();
    let exact = ca.leaf(&["www.example.test"]);
    let wild = ca.leaf(&["*.example.test"]);
    map.insert("exact", ["www.example.test"], Arc::clone(&exact))
        .unwrap();
    map.insert("wild", ["*.Example.test"], Arc::clone(&wild))
        .unwrap();
    let is = |name: &str, key: &Arc<rustls::sign::CertifiedKey>| {
        map.lookup(name).is_some_and(|k| Arc::ptr_eq(&k, key))
    };
    assert!(is("www.example.test", &exact));
    assert!(is("WWW.example.test.", &exact));
    assert!(is("api.example.test", &wild));
    assert!(map.lookup("example.test").is_none());
    assert!(map.lookup("a.b.example.test").is_none());
    assert!(map.lookup("").is_none());
    let mut ids = map.ids();
    ids.sort();
    assert_eq!(ids, ["exact", "wild"]);
}

#[test]
fn insert_replaces_an_id_and_the_latest_claim_on_a_name_wins() {
    let ca = Ca::new();
    let map = CertMap::new();
    let first = ca.leaf(&["a.test", "b.test"]);
    map.insert("site", ["a.test", "b.test"], Arc::clone(&first))
        .unwrap();
    // Re-inserting the id drops names it no longer lists.
    let second = ca.leaf(&["a.test"]);
    map.insert("site", ["a.test"], Arc::clone(&second)).unwrap();
    assert!(
        map.lookup("a.test")
            .is_some_and(|k| Arc::ptr_eq(&k, &second))
    );
    assert!(map.lookup("b.test").is_none());

    // Another id claiming the same name serves it while present.
    let other = ca.leaf(&["a.test"]);
    map.insert("files", ["a.test"], Arc::clone(&other)).unwrap();
    assert!(
        map.lookup("a.test")
            .is_some_and(|k| Arc::ptr_eq(&k, &other))
    );
    assert!(map.remove("files"));
    assert!(
        map.lookup("a.test")
            .is_some_and(|k| Arc::ptr_eq(&k, &second))
    );
    assert!(!map.remove("files"));
    assert!(map.remove("site"));
    assert!(map.lookup("a.test").is_none());
}

#[test]
fn invalid_names_are_rejected_and_change_nothing() {
    let ca = Ca::new();
    let map = CertMap::new();
    let key = ca.leaf(&["a.test"]);
    for bad in [
        &["a.test", "bad name"][..],
        &["a.*.test"],
        &["a.test:443"],
        &[],
    ] {
        let err = map
            .insert("x", bad.iter().copied(), Arc::clone(&key))
            .unwrap_err();
        assert!(
            matches!(err, EdgeError::InvalidName { .. } | EdgeError::NoNames),
            "{bad:?}: {err}"
        );
    }
    assert!(map.lookup("a.test").is_none());
    assert!(map.ids().is_empty());
}

#[test]
fn concurrent_readers_see_whole_tables() {
    let ca = Ca::new();
    let map = Arc::new(CertMap::new());
    let keys: Vec<_> = (0..4).map(|_| ca.leaf(&["a.test", "b.test"])).collect();
    map.insert("s", ["a.test", "b.test"], Arc::clone(&keys[0]))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (map, stop) = (Arc::clone(&map), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(map.lookup("a.test").is_some());
                    assert!(map.lookup("b.test").is_some());
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..200 {
        map.insert("s", ["a.test", "b.test"], Arc::clone(&keys[i % keys.len()]))
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
}

/// Thousands of inserts, replacements and removals (enough to fold the recent changes into a
/// new base many times, through `insert`, `remove` and batched `apply`) against a plain model:
/// after every step, every name resolves as "the latest claim wins, exact before wildcard".
#[test]
fn many_changes_resolve_like_a_plain_model() {
    use std::collections::HashMap;

    use edge::CertUpdate;

    let ca = Ca::new();
    // A few distinct certificates; which one a name resolves to is what is checked.
    let keys: Vec<_> = (0..4).map(|i| ca.leaf(&[&format!("k{i}.test")])).collect();
    // More names than the recent changes hold before they are folded into a new base (256).
    const POOL: u64 = 600;
    let pool: Vec<String> = (0..POOL)
        .map(|i| {
            if i % 10 == 0 {
                format!("*.w{}.test", i / 10)
            } else {
                format!("n{i}.w{}.test", i % 60)
            }
        })
        .collect();
    // The model: id -> (seq, names, key index).
    type Model = HashMap<String, (u64, Vec<String>, usize)>;
    let mut model: Model = HashMap::new();
    let mut seq = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // A new claim for `id` (1-3 names of the pool, one of the keys), recorded in the model.
    let claim = |next: &mut dyn FnMut(u64) -> u64, model: &mut Model, seq: &mut u64, id: &str| {
        let names: Vec<String> = (0..1 + next(3))
            .map(|_| pool[next(POOL) as usize].clone())
            .collect();
        let k = next(4) as usize;
        *seq += 1;
        model.insert(id.to_string(), (*seq, names.clone(), k));
        (names, k)
    };
    let map = CertMap::new();
    let winner = |model: &Model, pattern: &str| {
        model
            .values()
            .filter(|(_, names, _)| names.iter().any(|n| n == pattern))
            .max_by_key(|(s, _, _)| *s)
            .map(|(_, _, k)| *k)
    };
    for step in 0..3000 {
        let id = format!("id{}", next(800));
        let kind = next(10);
        let batch = kind == 2;
        match kind {
            0..=1 => {
                let had = model.remove(&id).is_some();
                assert_eq!(map.remove(&id), had, "step {step}: remove {id}");
            }
            2 => {
                // A batch of inserts and removals, one table rebuild.
                let mut updates = Vec::new();
                for _ in 0..next(300) {
                    let id = format!("id{}", next(800));
                    if next(4) == 0 {
                        model.remove(&id);
                        updates.push(CertUpdate::Remove { id });
                    } else {
                        let (names, k) = claim(&mut next, &mut model, &mut seq, &id);
                        updates.push(CertUpdate::Insert {
                            id,
                            names,
                            key: Arc::clone(&keys[k]),
                        });
                    }
                }
                assert!(map.apply(updates).iter().all(Result::is_ok));
            }
            _ => {
                let (names, k) = claim(&mut next, &mut model, &mut seq, &id);
                map.insert(id, names, Arc::clone(&keys[k])).unwrap();
            }
        }
        if !batch && step % 20 != 0 {
            continue;
        }
        for host in pool.iter().map(|p| p.replace("*.", "x.")) {
            let suffix = host.split_once('.').unwrap().1;
            let want = winner(&model, &host).or_else(|| winner(&model, &format!("*.{suffix}")));
            let got = map
                .lookup(&host)
                .map(|k| keys.iter().position(|key| Arc::ptr_eq(key, &k)).unwrap());
            assert_eq!(got, want, "step {step}: {host}");
        }
    }
    assert_eq!(map.ids().len(), model.len());
}
