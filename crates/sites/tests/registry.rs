//! The registry against every storage backend (a directory, a real PostgreSQL, a real Redis):
//! create/update/delete with versions, conflicts naming the holder, nothing written on error,
//! and concurrent creates of one domain from two writers (two "nodes" with their own store
//! handles): exactly one wins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use sites::{
    RedirectSpec, Registry, RegistryError, RespondSpec, SiteEnv, SiteSpec, Source, TlsSpec,
};
use store::{Storage, StorageKey};

fn env() -> SiteEnv {
    SiteEnv {
        base: None,
        acme: false,
        dns01: false,
        default_key_type: certs::KeyType::default(),
    }
}

fn redirect(domains: &[&str], to: &str) -> SiteSpec {
    let mut spec = SiteSpec::new(domains.iter().map(|d| (*d).to_owned()).collect());
    spec.tls = Some(TlsSpec::Named("internal".into()));
    spec.redirect = Some(RedirectSpec {
        to: to.into(),
        status: None,
        keep_path: None,
    });
    spec
}

/// Every stored object of the registry (sites and domain claims), as bytes, to show that a
/// refused call wrote nothing.
async fn snapshot(store: &Arc<dyn Storage>) -> Vec<(String, Vec<u8>)> {
    let mut keys = store.list(&Registry::prefix()).await.unwrap();
    keys.extend(
        store
            .list(&StorageKey::new("site-domains").unwrap())
            .await
            .unwrap(),
    );
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        out.push((key.to_string(), store.get(&key).await.unwrap().unwrap()));
    }
    out
}

/// The whole lifecycle on one backend; `other` opens a second handle onto the same store (a
/// second node).
async fn lifecycle(store: Arc<dyn Storage>, other: Arc<dyn Storage>) {
    let reg = Registry::new(store.clone(), "node-a".into());
    let reg_b = Registry::new(other, "node-b".into());
    let none = HashMap::new();
    assert!(reg.list().await.unwrap().is_empty());
    // A claim left by a write that never finished (its site was never stored) is stale.
    store
        .put(
            &StorageKey::new("site-domains/www.a.example").unwrap(),
            br#"{"site":"ghost.example"}"#,
        )
        .await
        .unwrap();

    let a = reg
        .create(
            redirect(&["A.example", "www.a.example"], "https://x.example"),
            &env(),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(
        (a.id.as_str(), a.version, a.updated_by.as_str()),
        ("a.example", 1, "node-a")
    );
    assert_eq!(reg_b.get("a.example").await.unwrap().unwrap(), a);
    assert_eq!(
        reg_b.get("A.EXAMPLE").await.unwrap().unwrap().id,
        "a.example"
    );
    assert!(reg.get("missing.example").await.unwrap().is_none());

    // Refusals, each leaving the store as it was.
    let before = snapshot(&store).await;
    let e = reg_b
        .create(
            redirect(&["b.example", "WWW.a.example"], "https://x.example"),
            &env(),
            &none,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::DomainTaken { domain, site, source: Source::Registry }
            if domain == "www.a.example" && site == "a.example"),
        "{e:?}"
    );
    let file: HashMap<String, String> =
        [("c.example".to_owned(), "file.example".to_owned())].into();
    let e = reg
        .create(
            redirect(&["b.example", "c.example"], "https://x.example"),
            &env(),
            &file,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::DomainTaken { site, source: Source::File, .. } if site == "file.example"),
        "{e:?}"
    );
    let e = reg
        .create(redirect(&["a.example"], "https://y.example"), &env(), &none)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::IdTaken { id } if id == "a.example"),
        "{e:?}"
    );
    let e = reg
        .create(redirect(&["b.example"], "y.example"), &env(), &none)
        .await
        .unwrap_err();
    let RegistryError::Invalid(field) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(field.path.json_pointer(), "/redirect/to");
    let e = reg
        .update(
            "a.example",
            redirect(&["a.example"], "https://y.example"),
            Some(7),
            &env(),
            &none,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::VersionMismatch { current: 1, .. }),
        "{e:?}"
    );
    let e = reg
        .update(
            "nope.example",
            redirect(&["nope.example"], "https://y.example"),
            None,
            &env(),
            &none,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
    let e = reg.delete("a.example", Some(2)).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::VersionMismatch { current: 1, .. }),
        "{e:?}"
    );
    assert_eq!(
        snapshot(&store).await,
        before,
        "a refused call changed the store"
    );

    // Update (conditional and not), from the other node.
    let a2 = reg_b
        .update(
            "a.example",
            redirect(&["a.example"], "https://y.example"),
            Some(1),
            &env(),
            &none,
        )
        .await
        .unwrap();
    assert_eq!((a2.version, a2.updated_by.as_str()), (2, "node-b"));
    // www.a.example was released by the update: another site may take it now.
    let b = reg
        .create(
            redirect(&["b.example", "www.a.example"], "https://x.example"),
            &env(),
            &none,
        )
        .await
        .unwrap();
    let mut respond = SiteSpec::new(vec!["a.example".into()]);
    respond.tls = Some(TlsSpec::Named("internal".into()));
    respond.respond = Some(RespondSpec {
        status: Some(204),
        body: None,
    });
    let a3 = reg
        .update("a.example", respond.clone(), None, &env(), &none)
        .await
        .unwrap();
    assert_eq!(a3.version, 3);
    assert_eq!(a3.spec, respond);
    let ids: Vec<String> = reg
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["a.example", "b.example"]);

    // Delete; versions go on if the id comes back, so an old If-Match cannot match.
    reg_b.delete("a.example", Some(3)).await.unwrap();
    assert!(reg.get("a.example").await.unwrap().is_none());
    assert!(matches!(
        reg.delete("a.example", None).await.unwrap_err(),
        RegistryError::NotFound { .. }
    ));
    let again = reg
        .create(redirect(&["a.example"], "https://z.example"), &env(), &none)
        .await
        .unwrap();
    assert_eq!(again.version, 5);
    assert_eq!(reg.list().await.unwrap().len(), 2);
    reg.delete("b.example", Some(b.version)).await.unwrap();
    assert_eq!(reg.list().await.unwrap().len(), 1);
}

/// Two writers create sites sharing a domain at the same moment: one wins, the other is told
/// which site holds the domain.
async fn concurrent_creates(store: Arc<dyn Storage>, other: Arc<dyn Storage>) {
    let none = HashMap::new();
    for round in 0..5 {
        let reg_a = Registry::new(store.clone(), "node-a".into());
        let reg_b = Registry::new(other.clone(), "node-b".into());
        let shared = format!("shared{round}.example");
        let a = redirect(
            &[&format!("a{round}.example"), &shared],
            "https://x.example",
        );
        let b = redirect(
            &[&format!("b{round}.example"), &shared],
            "https://x.example",
        );
        let (env_a, env_b) = (env(), env());
        let (ra, rb) = tokio::join!(
            reg_a.create(a, &env_a, &none),
            reg_b.create(b, &env_b, &none)
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        assert!(
            matches!(&loser, RegistryError::DomainTaken { domain, site, source: Source::Registry }
                if *domain == shared && *site == winner.id),
            "{loser:?}"
        );
        let holders = reg_a
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.spec.domains.contains(&shared))
            .count();
        assert_eq!(holders, 1);
    }
}

/// `create_many`: every refusal of a batch reported with its index, nothing written then; a
/// valid batch written in chunks (`count` sites, more than one chunk on the dir store); a site
/// already there with the same spec left as it is, so the batch can be run again; a removed
/// site's id re-added at its next version.
async fn batch(store: Arc<dyn Storage>, count: usize) {
    let reg = Registry::new(store.clone(), "cli:test".into());
    let none = HashMap::new();
    let a = redirect(&["a.example", "www.a.example"], "https://x.example");
    reg.create(a.clone(), &env(), &none).await.unwrap();
    let gone = reg
        .create(
            redirect(&["gone.example"], "https://x.example"),
            &env(),
            &none,
        )
        .await
        .unwrap();
    reg.delete("gone.example", None).await.unwrap();
    let file = HashMap::from([("f.example".to_owned(), "f.example".to_owned())]);
    let before = snapshot(&store).await;

    let refused = reg
        .create_many(
            vec![
                redirect(&["ok.example"], "https://x.example"),
                redirect(&["bad..example"], "https://x.example"),
                redirect(&["g.example", "f.example"], "https://x.example"),
                redirect(&["h.example", "WWW.a.example"], "https://x.example"),
                redirect(&["i.example", "ok.example"], "https://x.example"),
                redirect(&["a.example"], "https://other.example"),
            ],
            &env(),
            &file,
        )
        .await;
    assert!(refused.created.is_empty() && refused.stopped.is_none());
    let why: Vec<(usize, &RegistryError)> = refused
        .refused
        .iter()
        .map(|r| (r.index, &r.error))
        .collect();
    assert_eq!(why.len(), 5, "{why:?}");
    assert!(matches!(why[0], (1, RegistryError::Invalid(_))), "{why:?}");
    assert!(
        matches!(why[1], (2, RegistryError::DomainTaken { domain, source: Source::File, .. }) if domain == "f.example"),
        "{why:?}"
    );
    assert!(
        matches!(why[2], (3, RegistryError::DomainTaken { domain, site, source: Source::Registry }) if domain == "www.a.example" && site == "a.example"),
        "{why:?}"
    );
    assert!(
        matches!(why[3], (4, RegistryError::DomainRepeated { domain, site }) if domain == "ok.example" && site == "ok.example"),
        "{why:?}"
    );
    assert!(
        matches!(why[4], (5, RegistryError::IdTaken { id }) if id == "a.example"),
        "{why:?}"
    );
    assert_eq!(
        snapshot(&store).await,
        before,
        "a refused batch writes nothing"
    );

    let mut specs = vec![a.clone(), redirect(&["gone.example"], "https://y.example")];
    specs.extend((0..count).map(|i| {
        redirect(
            &[
                &format!("s{i}.batch.example"),
                &format!("www.s{i}.batch.example"),
            ],
            "https://x.example",
        )
    }));
    let done = reg.create_many(specs.clone(), &env(), &file).await;
    assert!(
        done.refused.is_empty() && done.stopped.is_none(),
        "{done:?}"
    );
    assert_eq!(done.unchanged, [0]);
    assert_eq!(done.created.len(), count + 1);
    assert_eq!(
        (done.created[0].id.as_str(), done.created[0].version),
        ("gone.example", gone.version + 2)
    );
    assert_eq!(
        done.created[count].id,
        format!("s{}.batch.example", count - 1)
    );
    let listed = reg.list().await.unwrap();
    assert_eq!(listed.len(), count + 2);
    assert!(listed.iter().all(|e| e.updated_by == "cli:test"));
    // Each new site's domains are claimed: a single create of one of them is refused.
    let err = reg
        .create(
            redirect(&["z.example", "www.s0.batch.example"], "https://x.example"),
            &env(),
            &none,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::DomainTaken { site, .. } if site == "s0.batch.example"),
        "{err:?}"
    );

    // Run again: everything is there already.
    let again = reg.create_many(specs, &env(), &file).await;
    assert!(
        again.created.is_empty() && again.refused.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.unchanged.len(), count + 2);
}

mod dir {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn batch() {
        let dir = tempfile::tempdir().unwrap();
        // More than one chunk of 1000.
        super::batch(open(dir.path()), 1050).await;
    }

    fn open(path: &std::path::Path) -> Arc<dyn Storage> {
        Arc::new(store::DirStore::open(path.to_path_buf()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        super::lifecycle(open(dir.path()), open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_creates() {
        let dir = tempfile::tempdir().unwrap();
        super::concurrent_creates(open(dir.path()), open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn on_demand_state() {
        let dir = tempfile::tempdir().unwrap();
        super::on_demand_state(open(dir.path())).await;
    }
}

/// An on-demand site keeps its state through reads; its state changes only at the version
/// named; an update through the API makes it an ordinary site.
async fn on_demand_state(store: Arc<dyn Storage>) {
    let reg = Registry::new(store, "node-a".into());
    let none = HashMap::new();
    let state = sites::OnDemandState {
        allowed_at: 100,
        client_ip: Some("192.0.2.7".into()),
        paused_until: None,
        first_paused_at: None,
        pauses: 0,
    };
    let spec = redirect(&["cust.example"], "https://app.example/");
    let a = reg
        .create_on_demand(spec.clone(), &env(), &none, state.clone())
        .await
        .unwrap();
    assert_eq!(a.on_demand.as_deref(), Some(&state));
    assert_eq!(
        reg.get("cust.example").await.unwrap().unwrap().on_demand,
        Some(Box::new(state.clone()))
    );
    let paused = sites::OnDemandState {
        paused_until: Some(200),
        first_paused_at: Some(150),
        pauses: 1,
        ..state.clone()
    };
    assert!(paused.paused_at(199) && !paused.paused_at(200));
    let err = reg
        .set_on_demand_state("cust.example", a.version + 1, paused.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::VersionMismatch { .. }),
        "{err:?}"
    );
    let b = reg
        .set_on_demand_state("cust.example", a.version, paused.clone())
        .await
        .unwrap();
    assert_eq!((b.version, b.spec.clone()), (a.version + 1, spec.clone()));
    assert_eq!(
        reg.list().await.unwrap()[0].on_demand.as_deref(),
        Some(&paused)
    );
    let c = reg
        .update("cust.example", spec, Some(b.version), &env(), &none)
        .await
        .unwrap();
    assert_eq!(c.on_demand, None);
    // Other sites are not on-demand.
    let d = reg
        .create(
            redirect(&["plain.example"], "https://app.example/"),
            &env(),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(d.on_demand, None);
}

mod postgres {
    use super::*;

    async fn open(pg: &testkit::Postgres) -> Arc<dyn Storage> {
        Arc::new(store::PostgresStore::connect(&pg.url()).await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lifecycle() {
        let pg = testkit::Postgres::start().await.unwrap();
        super::lifecycle(open(&pg).await, open(&pg).await).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch() {
        let pg = testkit::Postgres::start().await.unwrap();
        super::batch(open(&pg).await, 40).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_creates() {
        let pg = testkit::Postgres::start().await.unwrap();
        super::concurrent_creates(open(&pg).await, open(&pg).await).await;
    }
}

mod redis {
    use super::*;

    async fn open(server: &testkit::RedisServer) -> Arc<dyn Storage> {
        Arc::new(
            store::RedisStore::builder(server.url())
                .prefix("fleetgate:")
                .connect()
                .await
                .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lifecycle() {
        let server = testkit::RedisServer::start().await.unwrap();
        super::lifecycle(open(&server).await, open(&server).await).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch() {
        let server = testkit::RedisServer::start().await.unwrap();
        super::batch(open(&server).await, 40).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_creates() {
        let server = testkit::RedisServer::start().await.unwrap();
        super::concurrent_creates(open(&server).await, open(&server).await).await;
    }
}
