//! Fill a registry for benchmarks: `seed_registry POSTGRES_URL COUNT [FIRST]` adds COUNT
//! redirect sites `s<N>.bench.test` (+ `www.`), internal CA, no HTTPS redirect, and prints the
//! time it took.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sites::{RedirectSpec, Registry, SiteEnv, SiteSpec, TlsSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: seed_registry POSTGRES_URL COUNT [FIRST]"
    );
    let count: usize = args[2].parse()?;
    let first: usize = args.get(3).map_or(Ok(0), |a| a.parse())?;
    let store: Arc<dyn store::Storage> = Arc::new(store::PostgresStore::connect(&args[1]).await?);
    let registry = Registry::new(store, "seed".into());
    let env = SiteEnv {
        base: None,
        acme: false,
        dns01: false,
        default_key_type: certs::KeyType::default(),
    };
    let none = HashMap::new();
    let started = Instant::now();
    for n in first..first + count {
        let mut spec = SiteSpec::new(vec![
            format!("s{n}.bench.test"),
            format!("www.s{n}.bench.test"),
        ]);
        spec.tls = Some(TlsSpec::Named("internal".into()));
        spec.https_redirect = Some(false);
        spec.redirect = Some(RedirectSpec {
            to: format!("https://target{n}.example/"),
            status: None,
            keep_path: None,
        });
        registry.create(spec, &env, &none).await?;
    }
    println!("{count} sites created in {:?}", started.elapsed());
    Ok(())
}
