//! On-demand TLS at the edge: a name the map does not hold goes to the [`edge::OnDemand`] set on
//! the map, which may wait for a certificate (the handshake then succeeds) or refuse (the
//! handshake fails with `unrecognized_name`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edge::{CertMap, Limits, OnDemand};
use rustls::AlertDescription;
use rustls::sign::CertifiedKey;

/// Allows `late.test`: inserts its certificate a moment later (as a deployer would) and hands
/// it back; refuses everything else. Records who asked.
struct Late {
    map: Arc<CertMap>,
    key: Arc<CertifiedKey>,
    asked: Mutex<Vec<(String, IpAddr)>>,
}

#[async_trait::async_trait]
impl OnDemand for Late {
    async fn certificate_for(&self, sni: &str, client: IpAddr) -> Option<Arc<CertifiedKey>> {
        self.asked.lock().unwrap().push((sni.to_owned(), client));
        if sni != "late.test" {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.map
            .insert("late.test", ["late.test"], Arc::clone(&self.key))
            .unwrap();
        self.map.lookup(sni)
    }
}

#[tokio::test]
async fn a_name_without_certificate_waits_for_on_demand_or_is_refused() {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    let late = Arc::new(Late {
        map: Arc::clone(&certs),
        key: ca.leaf(&["late.test"]),
        asked: Mutex::new(Vec::new()),
    });
    assert!(certs.set_on_demand(late.clone()));
    assert!(!certs.set_on_demand(late.clone()), "set once");
    let sites = vec![respond(&["late.test"], "late")];
    let edge = TestEdge::start(sites, certs, Limits::default()).await;

    let info = testkit::tls_handshake(edge.https, "LATE.test", ca.root_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    assert!(info.leaf.dns_names.contains(&"late.test".to_owned()));

    let config = tls_config(ca.root_pem(), &[b"http/1.1"]);
    let err = testkit::tls_connect(edge.https, "refused.test", config)
        .await
        .expect_err("refused by on-demand");
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName),
        "{err:#}"
    );
    let asked = late.asked.lock().unwrap().clone();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        asked,
        vec![
            ("late.test".to_owned(), loopback),
            ("refused.test".to_owned(), loopback)
        ]
    );
}
