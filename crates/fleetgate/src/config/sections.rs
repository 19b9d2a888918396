//! One parser per section of the config file (sites apart, in `file_sites`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use certs::acme::{AcmeSettings, Eab};
use certs::{ChallengeKind, KeyType};
use sites::parse_duration;
use toml::Spanned;

use super::raw::{RawAcme, RawLimits, RawListen, RawLog, RawStorage, RawTls};
use super::{ConfigError, Ctx, LogConfig, LogFormat, SealKeySource, StorageConfig};

/// `listen.workers` above this is a typo rather than a machine.
const MAX_WORKERS: u32 = 1024;

/// `listen.workers` when the file does not say: one per core, as nginx's `worker_processes auto`
/// (one if the count is unknown).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS as usize))
}

/// `[listen]`, checked.
pub(super) struct Listen {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    pub workers: usize,
}

pub(super) fn listen(ctx: &Ctx<'_>, raw: &RawListen) -> Result<Listen, ConfigError> {
    let addr = |s: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
        s.get_ref().parse().map_err(|_| {
            ctx.err(
                Some(s.span()),
                key,
                format!(
                    "expected an address like \"0.0.0.0:443\", got {:?}",
                    s.get_ref()
                ),
            )
        })
    };
    let http = addr(&raw.http, "listen.http")?;
    let https = addr(&raw.https, "listen.https")?;
    if http == https {
        return Err(ctx.err(
            Some(raw.https.span()),
            "listen.https",
            "must differ from listen.http",
        ));
    }
    let proxy_protocol_from = raw
        .proxy_protocol_from
        .iter()
        .enumerate()
        .map(|(i, source)| {
            edge::ProxyProtocol::parse_source(source.get_ref()).map_err(|message| {
                ctx.err(
                    Some(source.span()),
                    format!("listen.proxy_protocol_from[{i}]"),
                    message,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let workers = match &raw.workers {
        Some(workers) if *workers.get_ref() > MAX_WORKERS => {
            return Err(ctx.err(
                Some(workers.span()),
                "listen.workers",
                format!("at most {MAX_WORKERS} (0 serves every connection on one shared runtime)"),
            ));
        }
        Some(workers) => *workers.get_ref() as usize,
        None => default_workers(),
    };
    Ok(Listen {
        http,
        https,
        proxy_protocol_from,
        workers,
    })
}

/// `[storage]`, checked: the backend, the sealing key and the manager's timings.
pub(super) struct Storage {
    pub storage: StorageConfig,
    pub seal_key: Option<SealKeySource>,
    pub timings: certs::Timings,
}

pub(super) fn storage(ctx: &Ctx<'_>, raw: &RawStorage) -> Result<Storage, ConfigError> {
    let data_path = raw
        .path
        .as_deref()
        .map(|p| ctx.resolve(p))
        .unwrap_or_else(|| PathBuf::from("/var/lib/fleetgate"));
    let url = |scheme: &[&str]| -> Result<String, ConfigError> {
        let Some(url) = &raw.url else {
            return Err(ctx.err(
                Some(raw.kind.span()),
                "storage.url",
                format!("storage.kind = {:?} needs a url", raw.kind.get_ref()),
            ));
        };
        if !scheme.iter().any(|s| url.get_ref().starts_with(s)) {
            return Err(ctx.err(
                Some(url.span()),
                "storage.url",
                format!("expected a URL starting with {}", scheme.join(" or ")),
            ));
        }
        Ok(url.get_ref().clone())
    };
    let ca_root = storage_ca_root(ctx, raw)?;
    let storage = match raw.kind.get_ref().as_str() {
        "dir" => StorageConfig::Dir { path: data_path },
        "postgres" => StorageConfig::Postgres {
            url: url(&["postgres://", "postgresql://"])?,
            path: data_path,
            ca_root,
        },
        "redis" => StorageConfig::Redis {
            url: url(&["redis://", "rediss://", "unix://"])?,
            prefix: raw
                .prefix
                .clone()
                .unwrap_or_else(|| "fleetgate:".to_string()),
            path: data_path,
            ca_root,
        },
        other => {
            return Err(ctx.err(
                Some(raw.kind.span()),
                "storage.kind",
                format!("expected \"dir\", \"postgres\" or \"redis\", got {other:?}"),
            ));
        }
    };
    let seal_key = match &raw.seal_key_file {
        Some(path) => Some(SealKeySource::File(
            ctx.existing_file(path, "storage.seal_key_file")?,
        )),
        None => None,
    };
    let mut timings = certs::Timings::default();
    for (value, key, into) in [
        (&raw.lease_ttl, "storage.lease_ttl", &mut timings.lease_ttl),
        (
            &raw.resync_interval,
            "storage.resync_interval",
            &mut timings.resync,
        ),
    ] {
        if let Some(v) = value {
            *into = parse_duration(v.get_ref())
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    ctx.err(
                        Some(v.span()),
                        key,
                        format!(
                            "expected a duration of at least 1s like \"30s\", got {:?}",
                            v.get_ref()
                        ),
                    )
                })?;
        }
    }
    Ok(Storage {
        storage,
        seal_key,
        timings,
    })
}

/// `storage.ca_root`: only for database backends, and it must hold a PEM certificate.
fn storage_ca_root(ctx: &Ctx<'_>, raw: &RawStorage) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = &raw.ca_root else {
        return Ok(None);
    };
    if raw.kind.get_ref() == "dir" {
        return Err(ctx.err(
            Some(path.span()),
            "storage.ca_root",
            "only used with storage.kind = \"postgres\" or \"redis\" (TLS to the database)",
        ));
    }
    let p = ctx.resolve(path.get_ref());
    let pem = std::fs::read(&p).map_err(|e| {
        ctx.err(
            Some(path.span()),
            "storage.ca_root",
            format!("cannot read {}: {e}", p.display()),
        )
    })?;
    use rustls_pki_types::pem::PemObject as _;
    let certs =
        rustls_pki_types::CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    if !certs.is_ok_and(|c| !c.is_empty()) {
        return Err(ctx.err(
            Some(path.span()),
            "storage.ca_root",
            format!("{} holds no PEM certificate", p.display()),
        ));
    }
    Ok(Some(p))
}

/// `[acme]`, checked, with the default key type of sites.
pub(super) struct Acme {
    pub settings: Option<AcmeSettings>,
    pub key_type: KeyType,
}

pub(super) fn acme(
    ctx: &Ctx<'_>,
    raw: Option<&Spanned<RawAcme>>,
    limits: &mut certs::limits::ClusterLimits,
) -> Result<Acme, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Acme {
            settings: None,
            key_type: KeyType::default(),
        });
    };
    let span = raw.span();
    let acme = raw.get_ref();
    let directory = acme.directory.get_ref().trim().to_string();
    if !directory.starts_with("https://") && !directory.starts_with("http://") {
        return Err(ctx.err(
            Some(acme.directory.span()),
            "acme.directory",
            "expected an https:// URL of the CA's directory",
        ));
    }
    let challenges = match &acme.challenges {
        None => vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
        Some(list) => {
            let mut out = Vec::new();
            for item in list {
                let kind = ChallengeKind::parse(item.get_ref()).ok_or_else(|| {
                    ctx.err(
                        Some(item.span()),
                        "acme.challenges",
                        format!(
                            "expected \"http-01\", \"tls-alpn-01\" or \"dns-01\", got {:?}",
                            item.get_ref()
                        ),
                    )
                })?;
                if !out.contains(&kind) {
                    out.push(kind);
                }
            }
            if out.is_empty() {
                return Err(ctx.err(
                    Some(span),
                    "acme.challenges",
                    "needs at least one challenge type",
                ));
            }
            out
        }
    };
    let key_type = match &acme.key_type {
        Some(kt) => sites::parse_key_type(kt.get_ref())
            .map_err(|m| ctx.err(Some(kt.span()), "acme.key_type", m))?,
        None => KeyType::default(),
    };
    for (value, into) in [
        (acme.orders_per_3h, &mut limits.orders_per_3h),
        (
            acme.certs_per_domain_per_week,
            &mut limits.certs_per_domain_per_week,
        ),
        (
            acme.failed_validations_per_hour,
            &mut limits.failed_validations_per_hour,
        ),
    ] {
        if let Some(v) = value {
            *into = v;
        }
    }
    let ca_root = match &acme.ca_root {
        Some(path) => Some(ctx.existing_file(path, "acme.ca_root")?),
        None => None,
    };
    Ok(Acme {
        settings: Some(AcmeSettings {
            directory,
            email: acme.email.clone(),
            ca_root,
            eab: acme.eab.as_ref().map(|e| Eab {
                kid: e.kid.clone(),
                hmac_key: e.hmac_key.clone(),
            }),
            challenges,
        }),
        key_type,
    })
}

pub(super) fn log(ctx: &Ctx<'_>, raw: &RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw
        .format
        .as_ref()
        .map(|f| (f.get_ref().as_str(), f.span()))
    {
        None | Some(("human", _)) => LogFormat::Human,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            return Err(ctx.err(
                Some(span),
                "log.format",
                format!("expected \"human\" or \"json\", got {other:?}"),
            ));
        }
    };
    Ok(LogConfig {
        format,
        level: raw.level.clone().unwrap_or_else(|| "info".to_string()),
    })
}

pub(super) fn limits(ctx: &Ctx<'_>, raw: &RawLimits) -> Result<edge::Limits, ConfigError> {
    let mut limits = edge::Limits::default();
    for (value, key, into) in [
        (
            &raw.header_read_timeout,
            "limits.header_read_timeout",
            &mut limits.header_read_timeout,
        ),
        (
            &raw.idle_timeout,
            "limits.idle_timeout",
            &mut limits.idle_timeout,
        ),
        (
            &raw.tls_handshake_timeout,
            "limits.tls_handshake_timeout",
            &mut limits.tls_handshake_timeout,
        ),
        (
            &raw.send_timeout,
            "limits.send_timeout",
            &mut limits.send_timeout,
        ),
        (
            &raw.drain_timeout,
            "limits.drain_timeout",
            &mut limits.drain_timeout,
        ),
    ] {
        if let Some(d) = value {
            *into = parse_duration(d.get_ref()).ok_or_else(|| {
                ctx.err(
                    Some(d.span()),
                    key,
                    format!(
                        "expected a duration like \"10s\", \"500ms\" or \"2m\", got {:?}",
                        d.get_ref()
                    ),
                )
            })?;
        }
    }
    if let Some(d) = &raw.send_timeout
        && limits.send_timeout.is_zero()
    {
        // Every write that has to wait would fail at once.
        return Err(ctx.err(
            Some(d.span()),
            "limits.send_timeout",
            "must be more than zero",
        ));
    }
    if let Some(n) = raw.max_connections {
        limits.max_connections = n.max(1);
    }
    Ok(limits)
}

/// `tls.ticket_key_rotation` when not set: the fleet's session ticket keys rotate twice a day.
pub const DEFAULT_TICKET_KEY_ROTATION: Duration = Duration::from_secs(12 * 60 * 60);
/// Shorter periods make tickets expire before browsers come back.
const MIN_TICKET_KEY_ROTATION: Duration = Duration::from_secs(60);
/// A ticket's lifetime is the period, and TLS 1.3 caps it at 7 days (RFC 8446 4.6.1).
const MAX_TICKET_KEY_ROTATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// `[tls]`: the rotation period of the fleet's session ticket keys.
pub(super) fn tls(ctx: &Ctx<'_>, raw: &RawTls) -> Result<Duration, ConfigError> {
    let Some(value) = &raw.ticket_key_rotation else {
        return Ok(DEFAULT_TICKET_KEY_ROTATION);
    };
    parse_duration(value.get_ref())
        .filter(|d| (MIN_TICKET_KEY_ROTATION..=MAX_TICKET_KEY_ROTATION).contains(d))
        .ok_or_else(|| {
            ctx.err(
                Some(value.span()),
                "tls.ticket_key_rotation",
                format!(
                    "expected a duration from 1m to 7d like \"12h\", got {:?}",
                    value.get_ref()
                ),
            )
        })
}
