//! Configured host names and the patterns they may be (`example.com`, `*.example.com`), and
//! the one lookup rule both the site table and the certificate map follow.

use std::collections::HashMap;
use std::fmt;

use crate::error::EdgeError;
use crate::host::normalise_config_name;

/// A configured name: exact or `*.suffix`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    Exact(String),
    Wildcard(String),
}

/// Validates and normalises a configured name or wildcard.
pub(crate) fn parse_pattern(name: &str) -> Result<Pattern, EdgeError> {
    let invalid = |reason| EdgeError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    match name.strip_prefix("*.") {
        Some(suffix) => normalise_config_name(suffix)
            .map(Pattern::Wildcard)
            .map_err(invalid),
        None => normalise_config_name(name)
            .map(Pattern::Exact)
            .map_err(invalid),
    }
}

/// Exact match, then the one-label wildcard. `host` must be normalised (lower case, no trailing
/// dot).
pub(crate) fn lookup<'a, V>(
    exact: &'a HashMap<String, V>,
    wildcard: &'a HashMap<String, V>,
    host: &str,
) -> Option<&'a V> {
    exact.get(host).or_else(|| {
        let (_, suffix) = host.split_once('.')?;
        wildcard.get(suffix)
    })
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}
