//! The one place that decides what a storage key or lock name may contain.

use std::fmt;

/// Why a key or lock name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid storage key {key:?}: {reason}")]
pub struct KeyError {
    pub key: String,
    pub reason: &'static str,
}

/// A storage key: `/`-separated segments of `[a-z0-9._@=+-]`, no empty, `.` or `..` segment,
/// at most 512 bytes. Safe to use as a relative file path and as a database or Redis key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey(String);

impl StorageKey {
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        validate(&key)?;
        Ok(StorageKey(key))
    }

    /// Append one segment made safe by [`sanitize_segment`]. Fails only when the result would
    /// pass the 512-byte limit.
    pub fn join(&self, segment: &str) -> Result<StorageKey, KeyError> {
        StorageKey::new(format!("{}/{}", self.0, sanitize_segment(segment)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments of the key.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `self` is `prefix` or lies under it, segment-wise.
    pub fn starts_with(&self, prefix: &StorageKey) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The name of a lock: one key segment, e.g. `cert-example.com`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

impl LockName {
    /// A lock name from arbitrary text, made safe by [`sanitize_segment`].
    pub fn new(name: &str) -> Self {
        LockName(sanitize_segment(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn allowed(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'@' | b'=' | b'+' | b'-')
}

/// Turn arbitrary text into one safe key segment: lower-cased, `*` becomes `wildcard_`, other
/// characters outside the allowed set become `_`, and `.`/`..`/empty become `_`. Different inputs
/// can map to one segment (`a:b` and `a;b`); callers put the exact text inside the value.
pub fn sanitize_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let lower = ch.to_ascii_lowercase();
        if lower == '*' {
            out.push_str("wildcard_");
        } else if lower.is_ascii() && allowed(lower as u8) {
            out.push(lower);
        } else {
            out.push('_');
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        out = "_".to_string();
    }
    out.truncate(200);
    out
}

fn validate(key: &str) -> Result<(), KeyError> {
    let err = |reason| {
        Err(KeyError {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return err("empty");
    }
    if key.len() > 512 {
        return err("longer than 512 bytes");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return err("empty segment");
        }
        if segment == "." || segment == ".." {
            return err("'.' or '..' segment");
        }
        if !segment.bytes().all(allowed) {
            return err("only a-z 0-9 . _ @ = + - and '/' between segments are allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Component, Path};

    use proptest::prelude::*;

    use super::*;

    /// Text rich in the characters that matter here: dots, slashes, stars, case, non-ASCII.
    fn tricky_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9./*_@=+ -]{0,40}",
            "[./]{0,12}",
            any::<String>(),
            "[a-z.]{190,260}",
        ]
    }

    proptest! {
        #[test]
        fn sanitize_output_is_a_valid_key(text in tricky_text()) {
            let seg = sanitize_segment(&text);
            prop_assert!(StorageKey::new(seg.clone()).is_ok(), "{seg:?} from {text:?}");
            prop_assert!(!seg.contains('/'));
            prop_assert!(seg.len() <= 200);
        }

        #[test]
        fn sanitize_is_idempotent(text in tricky_text()) {
            let once = sanitize_segment(&text);
            prop_assert_eq!(sanitize_segment(&once), once);
        }

        /// What `certs::layout` relies on: fixed segments around sanitised ones are valid keys.
        #[test]
        fn layout_style_keys_are_valid(a in tricky_text(), b in tricky_text()) {
            let key = format!("certs/{}/{}.json", sanitize_segment(&a), sanitize_segment(&b));
            prop_assert!(StorageKey::new(key).is_ok());
        }

        #[test]
        fn lock_names_are_valid_segments(text in tricky_text()) {
            let name = LockName::new(&text);
            prop_assert!(StorageKey::new(name.as_str()).is_ok());
            prop_assert!(!name.as_str().contains('/'));
        }

        /// An accepted key never climbs out of, or jumps past, the directory it is joined to.
        #[test]
        fn accepted_keys_never_traverse(text in tricky_text()) {
            if let Ok(key) = StorageKey::new(text) {
                prop_assert!(key.segments().all(|s| s != ".." && s != "." && !s.is_empty()));
                let joined = Path::new("/root/objects").join(key.as_str());
                prop_assert!(joined.starts_with("/root/objects"));
                prop_assert!(
                    Path::new(key.as_str()).components().all(|c| matches!(c, Component::Normal(_)))
                );
            }
        }

        #[test]
        fn join_is_valid_or_refused(base in "[a-z]{1,300}", seg in tricky_text()) {
            let base = StorageKey::new(base).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match base.join(&seg) {
                Ok(joined) => {
                    prop_assert!(StorageKey::new(joined.as_str()).is_ok());
                    prop_assert!(joined.starts_with(&base));
                }
                Err(e) => prop_assert!(e.key.len() > 512),
            }
        }
    }

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "..", "a/..", "../a", "a/../b", ".", "a/./b", "/a", "a/", "a//b", "A", "a\\b",
        ] {
            assert!(StorageKey::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(sanitize_segment(".."), "_");
        assert_eq!(sanitize_segment("*.Example.COM"), "wildcard_.example.com");
    }

    #[test]
    fn starts_with_is_segment_wise() {
        let key = |s: &str| StorageKey::new(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(key("certs/a/x").starts_with(&key("certs/a")));
        assert!(key("certs/a").starts_with(&key("certs/a")));
        assert!(!key("certs/ab").starts_with(&key("certs/a")));
    }
}
