//! Configured host names and the patterns they may be (`example.com`, `*.example.com`), and
//! the one lookup rule both the site table and the certificate map follow.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::EdgeError;
use crate::host::normalise_config_name;

/// A configured name: exact or `*.suffix`. The name is shared, not copied, by every map that
/// holds it (the SNI map holds each name in three: 100,000 sites have 200,000 names).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    Exact(Arc<str>),
    Wildcard(Arc<str>),
}

/// Validates and normalises a configured name or wildcard.
pub(crate) fn parse_pattern(name: &str) -> Result<Pattern, EdgeError> {
    let invalid = |reason| EdgeError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    match name.strip_prefix("*.") {
        Some(suffix) => normalise_config_name(suffix)
            .map(|s| Pattern::Wildcard(s.into()))
            .map_err(invalid),
        None => normalise_config_name(name)
            .map(|n| Pattern::Exact(n.into()))
            .map_err(invalid),
    }
}

/// Exact match, then the one-label wildcard. `host` must be normalised (lower case, no trailing
/// dot).
pub(crate) fn lookup<'a, K, V>(
    exact: &'a HashMap<K, V>,
    wildcard: &'a HashMap<K, V>,
    host: &str,
) -> Option<&'a V>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
{
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
