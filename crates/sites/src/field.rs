//! Where in a site an error is: [`FieldPath`], and the error itself, [`FieldError`].

use std::fmt;

/// One step into a site: a key of a table/object or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A field inside one site, e.g. `["redirect", "to"]` or `["domains", 1]`; empty: the site
/// itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The site itself.
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    /// This path with `key` appended.
    pub fn key(&self, key: &str) -> FieldPath {
        let mut out = self.clone();
        out.0.push(Segment::Key(key.to_owned()));
        out
    }

    /// This path with the array index `index` appended.
    pub fn index(&self, index: usize) -> FieldPath {
        let mut out = self.clone();
        out.0.push(Segment::Index(index));
        out
    }

    /// A path of keys, e.g. `FieldPath::of(&["proxy", "health", "path"])`.
    pub fn of(keys: &[&str]) -> FieldPath {
        FieldPath(keys.iter().map(|k| Segment::Key((*k).to_owned())).collect())
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `redirect.to`, `domains[1]`, `proxy.upstreams[0]`; empty for the site itself.
    pub fn dotted(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// RFC 6901: `/redirect/to`, `/domains/1`; empty for the site itself.
    pub fn json_pointer(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            out.push('/');
            match segment {
                Segment::Key(key) => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
                Segment::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dotted())
    }
}

/// A site refused: which field, and why (the reason names what was expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_root() { String::new() } else { format!("{path}: ") })]
pub struct FieldError {
    pub path: FieldPath,
    pub message: String,
}

impl FieldError {
    pub fn new(path: FieldPath, message: impl Into<String>) -> FieldError {
        FieldError {
            path,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_and_pointer() {
        let p = FieldPath::root().key("proxy").key("upstreams").index(2);
        assert_eq!(p.dotted(), "proxy.upstreams[2]");
        assert_eq!(p.json_pointer(), "/proxy/upstreams/2");
        assert_eq!(FieldPath::root().dotted(), "");
        assert_eq!(FieldPath::of(&["a/b", "c~"]).json_pointer(), "/a~1b/c~0");
        let e = FieldError::new(FieldPath::of(&["redirect", "to"]), "bad");
        assert_eq!(e.to_string(), "redirect.to: bad");
    }
}
