//! The one-shot commands: `check`, `certs`, `ca export`.

use std::io::Write;

use anyhow::Context;

use crate::config::{Config, SiteAction, TlsChoice};

/// `fleetgate check`: the config is valid (or `main` already reported why not) and every
/// certificate from files may be served, decided by [`crate::config::check_certificates`], the
/// same function a SIGHUP reload calls. Errors (`file:line: site[i].tls: ...`) and warnings go
/// to stderr before anything else; only a config without errors is listed, after `file: OK`.
pub fn check(config: &Config) -> anyhow::Result<()> {
    crate::run::routes(&config.sites).with_context(|| config.file.display().to_string())?;
    // Purchased certificates must be servable now, not at 3 a.m. on the next reload.
    let certs = crate::config::check_certificates(config);
    {
        let mut err = std::io::stderr().lock();
        for finding in &certs.fatal {
            writeln!(err, "{finding}")?;
        }
        for finding in &certs.warnings {
            writeln!(err, "warning: {finding}")?;
        }
    }
    if certs.is_fatal() {
        anyhow::bail!(
            "{}: {} problem(s) with certificate files; fleetgate would not serve them",
            config.file.display(),
            certs.fatal.len()
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: OK", config.file.display())?;
    writeln!(
        out,
        "listen: http {} https {}",
        config.listen_http, config.listen_https
    )?;
    if !config.proxy_protocol_from.is_empty() {
        let from: Vec<String> = config
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        writeln!(out, "PROXY protocol from: {}", from.join(", "))?;
    }
    if config.workers > 0 {
        writeln!(
            out,
            "workers: {} (each serves its share of the connections)",
            config.workers
        )?;
    }
    match &config.storage {
        crate::config::StorageConfig::Dir { path } => {
            writeln!(out, "storage: dir {}", path.display())?
        }
        crate::config::StorageConfig::Postgres { url, path, ca_root } => {
            let tls = url
                .parse::<store::PostgresUrl>()
                .is_ok_and(|u| u.uses_tls());
            writeln!(
                out,
                "storage: postgres{} (local cache {})",
                tls_note(tls, ca_root.as_deref()),
                path.display()
            )?
        }
        crate::config::StorageConfig::Redis {
            url,
            prefix,
            path,
            ca_root,
        } => writeln!(
            out,
            "storage: redis, prefix {prefix:?}{} (local cache {})",
            tls_note(url.starts_with("rediss://"), ca_root.as_deref()),
            path.display()
        )?,
    }
    if let Some(acme) = &config.acme {
        let challenges: Vec<&str> = acme.challenges.iter().map(|c| c.as_str()).collect();
        writeln!(out, "acme: {} ({})", acme.directory, challenges.join(", "))?;
    }
    if config.sites.is_empty() {
        writeln!(
            out,
            "no [[site]]: this node serves the site registry's sites only"
        )?;
    }
    for (i, site) in config.sites.iter().enumerate() {
        let action = match &site.action {
            SiteAction::Redirect {
                to,
                status,
                keep_path,
            } => {
                format!(
                    "redirect {status} to {to}{}",
                    if *keep_path {
                        " (keeping the path)"
                    } else {
                        ""
                    }
                )
            }
            SiteAction::Respond { status, .. } => format!("respond {status}"),
            SiteAction::Proxy { proxy, .. } => format!(
                "proxy ({}) to {}",
                proxy.policy.as_str(),
                proxy.upstreams.join(", ")
            ),
        };
        let tls = match &site.tls {
            TlsChoice::Acme => "acme".to_string(),
            TlsChoice::Internal => "internal".to_string(),
            TlsChoice::Files { cert, key } => {
                format!("files {} + {}", cert.display(), key.display())
            }
        };
        writeln!(out, "site[{i}]: {action}; tls {tls}")?;
        for d in &site.domains {
            writeln!(out, "  {d}")?;
        }
    }
    Ok(())
}

/// `fleetgate certs`: one row per certificate, read from storage and files.
pub async fn certs(config: &Config) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let rows = certs::Manager::statuses(
        store.as_ref(),
        &crate::node_sites::managed_certs(config, store.clone()).await,
    )
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:<9} {:<32} {:<20} {:>9} {:<9} LAST ERROR",
        "DOMAINS", "SOURCE", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATE"
    )?;
    for row in rows {
        let domains: Vec<String> = row.domains.iter().map(|d| d.to_string()).collect();
        let not_after = row
            .not_after
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".to_string());
        let days = row
            .not_after
            .map(|t| format!("{:.1}", (t - now) as f64 / 86_400.0))
            .unwrap_or_else(|| "-".to_string());
        writeln!(
            out,
            "{:<40} {:<9} {:<32} {:<20} {:>9} {:<9} {}",
            truncate(&domains.join(","), 40),
            row.source.to_string(),
            truncate(row.issuer.as_deref().unwrap_or("-"), 32),
            not_after,
            days,
            row.state.to_string(),
            row.last_error.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

/// `fleetgate ca export`: the built-in CA's root, PEM.
pub async fn ca_export(config: &Config) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let node = crate::store_open::node_name(config);
    let ca = certs::internal::InternalCa::new(store, node);
    let pem = ca.root_pem().await?;
    print!("{pem}");
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// `, TLS verified against ROOT` for `check`'s storage line; empty without TLS.
fn tls_note(tls: bool, ca_root: Option<&std::path::Path>) -> String {
    match (tls, ca_root) {
        (false, _) => String::new(),
        (true, Some(root)) => format!(", TLS verified against {}", root.display()),
        (true, None) => ", TLS verified against the system roots".to_owned(),
    }
}
