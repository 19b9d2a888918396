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
