//! The one-shot commands: `check`, `certs`, `ca export`.

use std::io::Write;

use anyhow::Context;

use crate::config::{Config, SiteAction, TlsChoice};

/// `fleetgate check`: the config is valid (or `main` already reported why not) and every
/// certificate from files may be served, decided by [`crate::config::check_certificates`], the
/// same function a SIGHUP reload calls. Errors (`file:line: site[i].tls: ...`) and warnings go
/// to stderr before anything else; only a config without errors is listed, after `file: OK`.
pub fn check(config: &Config) -> anyhow::Result<()> {
    crate::run::routes(&config.sites, &edge::NoObserver)
        .with_context(|| config.file.display().to_string())?;
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

/// How `fleetgate certs` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertsForm {
    /// One row per certificate, long fields cut to fit.
    Table,
    /// The table with full domain lists and issuers, each finding on a line below its row.
    Wide,
    /// One JSON array.
    Json,
}

/// One certificate in `fleetgate certs --json`.
#[derive(Debug, serde::Serialize)]
struct CertJson<'a> {
    id: &'a str,
    domains: Vec<String>,
    source: String,
    issuer: Option<&'a str>,
    not_after: Option<i64>,
    days_left: Option<f64>,
    state: certs::CertState,
    last_error: Option<&'a str>,
    findings: Vec<FindingJson<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct FindingJson<'a> {
    severity: certs::Severity,
    message: String,
    #[serde(flatten)]
    finding: &'a certs::Finding,
}

/// `fleetgate certs`: one row per certificate, read from storage and files.
pub async fn certs(config: &Config, form: CertsForm) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let rows = certs::Manager::statuses(
        store.as_ref(),
        &crate::node_sites::managed_certs(config, store.clone()).await,
    )
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let days_left = |not_after: Option<i64>| not_after.map(|t| (t - now) as f64 / 86_400.0);
    let mut out = std::io::stdout().lock();
    if form == CertsForm::Json {
        let doc: Vec<CertJson<'_>> = rows
            .iter()
            .map(|row| CertJson {
                id: row.id.as_str(),
                domains: row.domains.iter().map(ToString::to_string).collect(),
                source: row.source.to_string(),
                issuer: row.issuer.as_deref(),
                not_after: row.not_after,
                days_left: days_left(row.not_after),
                state: row.state,
                last_error: row.last_error.as_deref(),
                findings: row
                    .findings
                    .iter()
                    .map(|f| FindingJson {
                        severity: f.severity(),
                        message: f.to_string(),
                        finding: f,
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let wide = form == CertsForm::Wide;
    let domain_lists: Vec<String> = rows
        .iter()
        .map(|row| {
            let domains: Vec<String> = row.domains.iter().map(|d| d.to_string()).collect();
            domains.join(",")
        })
        .collect();
    let (domains_width, issuer_width) = if wide {
        (
            domain_lists
                .iter()
                .map(|d| d.chars().count())
                .fold(7, usize::max),
            rows.iter()
                .filter_map(|r| r.issuer.as_deref())
                .map(|i| i.chars().count())
                .fold(6, usize::max),
        )
    } else {
        (40, 32)
    };
    writeln!(
        out,
        "{:<domains_width$} {:<9} {:<issuer_width$} {:<20} {:>9} {:<9} LAST ERROR",
        "DOMAINS", "SOURCE", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATE"
    )?;
    for (row, domains) in rows.iter().zip(&domain_lists) {
        let not_after = row
            .not_after
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".to_string());
        let days = days_left(row.not_after)
            .map(|d| format!("{d:.1}"))
            .unwrap_or_else(|| "-".to_string());
        let issuer = row.issuer.as_deref().unwrap_or("-");
        let (domains, issuer) = if wide {
            (domains.clone(), issuer.to_string())
        } else {
            (truncate(domains, 40), truncate(issuer, 32))
        };
        writeln!(
            out,
            "{:<domains_width$} {:<9} {:<issuer_width$} {:<20} {:>9} {:<9} {}",
            domains,
            row.source.to_string(),
            issuer,
            not_after,
            days,
            row.state.to_string(),
            row.last_error.as_deref().unwrap_or("-"),
        )?;
        if wide {
            for finding in &row.findings {
                writeln!(out, "    {}: {finding}", finding.severity())?;
            }
        }
    }
    Ok(())
}

/// `fleetgate ca export`: the built-in CA's root, PEM.
pub async fn ca_export(config: &Config) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let node = crate::store_open::node_name(config);
    let ca = certs::internal::InternalCa::new(store, node);
    let pem = ca.root_pem().await?;
    std::io::stdout().lock().write_all(pem.as_bytes())?;
    Ok(())
}
/// `fleetgate tickets rotate`: the fleet's next TLS ticket keys, now.
pub async fn tickets_rotate(config: &Config) -> anyhow::Result<()> {
    use crate::ticket_keys::{Rotation, When, rotate};
    let (store, _) = crate::store_open::open_store(config).await?;
    let node = crate::store_open::node_name(config);
    match rotate(store.as_ref(), &node, When::Now).await? {
        Rotation::Rotated(keys) => {
            println!(
                "TLS ticket keys rotated: generation {}, sealing with key {}; every node swaps them in within seconds",
                keys.generation,
                keys.current_id()
            );
            Ok(())
        }
        Rotation::Busy(holder) => anyhow::bail!(
            "node {} is rotating the ticket keys right now; try again in a minute",
            holder.owner
        ),
        Rotation::NotDue(_) => anyhow::bail!("not rotated (a forced rotation is always due)"),
    }
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
