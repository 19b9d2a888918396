//! The `[admin]` section of the config file: where the admin API listens and the bearer token it
//! requires. Off unless the section is present. A TCP address that is not loopback needs
//! `token_file` (on loopback or a unix socket the token is optional, as Caddy's admin endpoint).
//!
//! Kept apart from `config` (which calls [`parse`] for the section and turns [`SectionError`]
//! into its file:line:key error) so that `admin` can use `config` without a cycle.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The raw `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    listen: Spanned<String>,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
}

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    /// A unix socket at this path (made 0600; a stale socket file is replaced).
    Unix(PathBuf),
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminListen::Tcp(addr) => write!(f, "{addr}"),
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The bearer token every admin request must carry; redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The validated `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: AdminListen,
    /// `None`: no token required (only allowed on loopback and unix sockets).
    pub token: Option<AdminToken>,
}

/// What is wrong in the section: where (a span of the config text), which key, and why.
#[derive(Debug)]
pub struct SectionError {
    pub span: Range<usize>,
    pub key: &'static str,
    pub message: String,
}

/// Shortest token accepted: a guessable token on the admin API is no protection.
const MIN_TOKEN_LEN: usize = 16;

/// Validate the section; `resolve` makes a path relative to the config file's folder absolute.
pub fn parse(
    raw: &RawAdmin,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<AdminConfig, SectionError> {
    let text = raw.listen.get_ref().trim();
    let listen_error = |message: String| SectionError {
        span: raw.listen.span(),
        key: "admin.listen",
        message,
    };
    let listen = match text.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => AdminListen::Unix(resolve(path)),
        _ => AdminListen::Tcp(text.parse().map_err(|_| {
            listen_error(format!(
                "expected an address like \"127.0.0.1:9180\" or \"unix:/run/fleetgate/admin.sock\", got {text:?}"
            ))
        })?),
    };
    let token = match &raw.token_file {
        Some(path) => {
            Some(
                read_token(&resolve(path.get_ref())).map_err(|message| SectionError {
                    span: path.span(),
                    key: "admin.token_file",
                    message,
                })?,
            )
        }
        None => None,
    };
    if let AdminListen::Tcp(addr) = &listen
        && !addr.ip().is_loopback()
        && token.is_none()
    {
        return Err(listen_error(format!(
            "{addr} is not a loopback address: set admin.token_file (a file holding the bearer token), or listen on 127.0.0.1 or a unix socket"
        )));
    }
    Ok(AdminConfig { listen, token })
}

fn read_token(file: &Path) -> Result<AdminToken, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{} must hold a token of at least {MIN_TOKEN_LEN} characters (e.g. from `openssl rand -hex 32`)",
            file.display()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be printable ASCII without spaces",
            file.display()
        ));
    }
    Ok(AdminToken(token.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse_text(text: &str, dir: &Path) -> Result<AdminConfig, SectionError> {
        let raw: RawAdmin = toml::from_str(text).unwrap();
        let base = dir.to_path_buf();
        parse(&raw, &move |p: &str| base.join(p))
    }

    #[test]
    fn listen_forms_and_the_token_rule() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse_text("listen = \"127.0.0.1:9180\"", dir.path()).unwrap();
        assert_eq!(
            c.listen,
            AdminListen::Tcp("127.0.0.1:9180".parse().unwrap())
        );
        assert!(c.token.is_none());
        let c = parse_text("listen = \"[::1]:9180\"", dir.path()).unwrap();
        assert!(matches!(c.listen, AdminListen::Tcp(_)));
        let c = parse_text("listen = \"unix:admin.sock\"", dir.path()).unwrap();
        assert_eq!(c.listen, AdminListen::Unix(dir.path().join("admin.sock")));

        let e = parse_text("listen = \"0.0.0.0:9180\"", dir.path()).unwrap_err();
        assert_eq!(e.key, "admin.listen");
        assert!(e.message.contains("token_file"), "{}", e.message);
        let e = parse_text("listen = \"localhost\"", dir.path()).unwrap_err();
        assert_eq!(e.key, "admin.listen");

        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let e = parse_text(
            "listen = \"0.0.0.0:9180\"\ntoken_file = \"short\"",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.key, "admin.token_file");
        let e = parse_text(
            "listen = \"0.0.0.0:9180\"\ntoken_file = \"missing\"",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.key, "admin.token_file");
        std::fs::write(dir.path().join("token"), "0123456789abcdef0123\n").unwrap();
        let c = parse_text(
            "listen = \"0.0.0.0:9180\"\ntoken_file = \"token\"",
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.token.unwrap().as_bytes(), b"0123456789abcdef0123");
    }
}
