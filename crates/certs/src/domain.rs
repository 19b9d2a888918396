//! Domain names, parsed once.

use std::fmt;

/// A domain name as configured: lower-case ASCII (IDNs must be given in punycode), labels of
/// `a-z0-9-` not starting or ending with `-`, at most 253 bytes, at least two labels unless it
/// is `localhost`. A leading `*.` makes a wildcard (only valid for files and the internal CA).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain name {name:?}: {reason}")]
pub struct DomainError {
    pub name: String,
    pub reason: &'static str,
}

impl DomainName {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let err = |reason| DomainError {
            name: text.to_string(),
            reason,
        };
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(err("empty"));
        }
        if name.len() > 253 {
            return Err(err("longer than 253 bytes"));
        }
        if !name.is_ascii() {
            return Err(err(
                "not ASCII; write internationalised names in punycode (xn--)",
            ));
        }
        let body = name.strip_prefix("*.").unwrap_or(&name);
        let labels: Vec<&str> = body.split('.').collect();
        if labels.len() < 2 && body != "localhost" {
            return Err(err("needs at least two labels (example.com)"));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(err("empty label"));
            }
            if label.len() > 63 {
                return Err(err("label longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(err("only letters, digits and '-' are allowed in a label"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label cannot start or end with '-'"));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err("IP addresses are not domain names"));
        }
        Ok(DomainName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DomainName::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> Self {
        value.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            DomainName::parse("WWW.Example.COM.").unwrap().as_str(),
            "www.example.com"
        );
        assert!(DomainName::parse("*.example.com").unwrap().is_wildcard());
        assert!(DomainName::parse("localhost").is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "com",
            "-a.com",
            "a-.com",
            "a..com",
            "a b.com",
            "1.2.3.4",
            "ex_ample.com",
            "é.com",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
