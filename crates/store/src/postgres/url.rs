//! The database address: parsed once (when the configuration is validated), shown without its
//! password.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

/// A PostgreSQL connection string, parsed and checked: `postgres://user:pass@host:port/db?..`
/// or the `key=value` form libpq accepts.
///
/// TLS: `sslmode=require` connects over TLS only, verifying the server's certificate for its
/// host name (see [`super::PostgresOptions::ca_root_pem`]); any other `sslmode` (the default
/// is `prefer`) connects without TLS, as if it said `disable`.
#[derive(Clone)]
pub struct PostgresUrl {
    pub(super) config: tokio_postgres::Config,
    /// `sslmode=require`.
    pub(super) tls: bool,
    shown: String,
}

/// Why a PostgreSQL URL was refused. The message never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PostgreSQL URL: {reason}")]
pub struct InvalidPostgresUrl {
    pub reason: String,
}

impl FromStr for PostgresUrl {
    type Err = InvalidPostgresUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: String| Err(InvalidPostgresUrl { reason });
        let mut config: tokio_postgres::Config = match url.parse() {
            Ok(config) => config,
            // tokio-postgres' parse errors name the offending option, not the password.
            Err(e) => return refuse(e.to_string()),
        };
        if config.get_hosts().is_empty() {
            return refuse("no host given".into());
        }
        let tls = config.get_ssl_mode() == SslMode::Require;
        if tls
            && config
                .get_hosts()
                .iter()
                .any(|h| matches!(h, Host::Unix(_)))
        {
            return refuse("sslmode=require needs a TCP host, not a Unix socket".into());
        }
        if !tls {
            // `prefer` would try TLS when the server offers it; only `require` does.
            config.ssl_mode(SslMode::Disable);
        }
        let shown = show(&config);
        Ok(PostgresUrl { config, tls, shown })
    }
}

/// `postgres://user@host:port/db`: what a log line or an error may show.
fn show(config: &tokio_postgres::Config) -> String {
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port applies to every host; otherwise there is one per host.
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

impl PostgresUrl {
    /// Whether connections use TLS (`sslmode=require`).
    pub fn uses_tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn shown_without_password() {
        let url: PostgresUrl = "postgres://fleetgate:s3cret@db.internal:5433/fleetgate"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://fleetgate@db.internal:5433/fleetgate"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn only_sslmode_require_uses_tls() {
        let url: PostgresUrl = "postgres://u@h/db?sslmode=require".parse().unwrap();
        assert!(url.tls);
        assert_eq!(url.config.get_ssl_mode(), SslMode::Require);
        for plain in ["postgres://u@h/db", "postgres://u@h/db?sslmode=prefer"] {
            let url: PostgresUrl = plain.parse().unwrap();
            assert!(!url.tls, "{plain}");
            assert_eq!(url.config.get_ssl_mode(), SslMode::Disable, "{plain}");
        }
        let err = "host=/run/postgresql dbname=x sslmode=require"
            .parse::<PostgresUrl>()
            .unwrap_err();
        assert!(err.reason.contains("Unix socket"), "{err}");
    }

    #[test]
    fn garbage_and_missing_host_are_refused() {
        assert!(
            "postgres://u@h/db?nonsense=1"
                .parse::<PostgresUrl>()
                .is_err()
        );
        assert!("dbname=x".parse::<PostgresUrl>().is_err());
    }
}
