//! Shape errors from serde in the user's words: which key (found through toml's spans, inline
//! tables and `[[site]]` indexes included), what it expected ("a duration like \"5s\"", "a
//! whole number", "true or false") and what it got; and a `[site]` table where `[[site]]` is
//! meant.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Keys read as arrays of tables; a single `[name]` table there is a missing bracket pair.
const TABLE_ARRAYS: &[&str] = &["site"];

/// A single `[site]` table where `[[site]]` is meant: `(span of the table, key, message)`.
pub(super) fn single_table_for_array(text: &str) -> Option<(Range<usize>, String, String)> {
    let doc = DeTable::parse(text).ok()?;
    for (key, value) in doc.get_ref().iter() {
        let name = key.get_ref().as_ref();
        if TABLE_ARRAYS.contains(&name) && matches!(value.get_ref(), DeValue::Table(_)) {
            let span = header_span(text, name).unwrap_or_else(|| key.span());
            return Some((
                span,
                name.to_string(),
                format!(
                    "write [[{name}]] (two brackets) to start each {name}: a list of {name}s is \
                     an array of tables, and [{name}] is a single table"
                ),
            ));
        }
    }
    None
}

/// Where `[name]` is written as a header, if it is.
fn header_span(text: &str, name: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[')
            && !rest.starts_with('[')
            && rest.split(']').next().map(str::trim) == Some(name)
        {
            let start = offset + (line.len() - trimmed.len());
            return Some(start..start + trimmed.trim_end().len());
        }
        offset += line.len();
    }
    None
}

/// The dotted key of the innermost value whose span holds `span` (`site[1].proxy.upstreams[0]`),
/// or `None` when the text does not parse or nothing holds it.
pub(super) fn key_of_span(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    search_table(doc.get_ref(), span, String::new(), 0, &mut best);
    best.map(|(_, key)| key)
}

/// Every value under `table` is looked at (tables opened by headers do not span their keys), the
/// deepest one holding `span` wins.
fn search_table(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: String,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        search_value(value, span, path, depth + 1, best);
    }
}

fn search_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: String,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    let held = value.span().start <= span.start && span.end <= value.span().end;
    if held && best.as_ref().is_none_or(|(d, _)| depth > *d) {
        *best = Some((depth, path.clone()));
    }
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, span, path, depth, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                search_value(item, span, format!("{path}[{i}]"), depth + 1, best);
            }
        }
        _ => {}
    }
}

/// serde's message about `key` in the user's words: `expected a duration like "5s", got 5`.
/// Messages that are not about a value's type are returned as they are.
pub(super) fn in_user_words(message: &str, key: &str) -> String {
    let message = message.trim();
    if let Some(enum_name) =
        message.strip_prefix("data did not match any variant of untagged enum ")
    {
        let expected = match enum_name.trim() {
            "TlsSpec" => "\"acme\", \"internal\" or { cert = \"...\", key = \"...\" }",
            "HstsSpec" => "true, false or a table like { max_age = \"365d\" }",
            "SizeSpec" => "a size like \"10MiB\" or a whole number of bytes",
            _ => return message.to_string(),
        };
        return format!("expected {expected}");
    }
    let (got, expected) = if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        match rest.split_once(", expected ") {
            Some((got, expected)) => (got, expected),
            None => return message.to_string(),
        }
    } else {
        return message.to_string();
    };
    format!(
        "expected {}, got {}",
        expected_words(expected, key),
        got_words(got)
    )
}

/// What a key expects, said for people.
fn expected_words(expected: &str, key: &str) -> String {
    let last = key
        .rsplit('.')
        .next()
        .unwrap_or(key)
        .split('[')
        .next()
        .unwrap_or("");
    let duration = last.ends_with("_timeout")
        || last.ends_with("_interval")
        || matches!(last, "timeout" | "interval" | "lease_ttl" | "max_age");
    if duration {
        return "a duration like \"5s\" (in quotes; units ms, s, m, h, d)".to_string();
    }
    if TABLE_ARRAYS.contains(&key) && expected == "a sequence" {
        return format!("[[{key}]] tables, one per {key}");
    }
    if matches!(last, "http" | "https") && expected == "a string" {
        return "an address like \"0.0.0.0:443\" (in quotes)".to_string();
    }
    let expected = expected.trim();
    match expected {
        "a string" => "text in quotes".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list in brackets, like [\"a\", \"b\"]".to_string(),
        "a map" => "a table".to_string(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "an integer" => "a whole number".to_string(),
        "f32" | "f64" | "a float" => "a number".to_string(),
        other if other.starts_with("struct ") => "a table".to_string(),
        other => other.to_string(),
    }
}

/// What serde saw, said for people: `integer `5`` -> `5`, `map` -> `a table`.
fn got_words(got: &str) -> String {
    let got = got.trim();
    let value = |prefix: &str| {
        got.strip_prefix(prefix)
            .map(|v| v.trim().trim_matches('`').to_string())
    };
    if let Some(v) = value("integer ").or_else(|| value("floating point ")) {
        return v;
    }
    if let Some(v) = value("boolean ") {
        return v;
    }
    if let Some(v) = value("string ") {
        return v;
    }
    match got {
        "map" => "a table".to_string(),
        "sequence" => "a list".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inside_inline_tables_and_site_arrays() {
        let text = "[[site]]\ndomains = [\"a\"]\n\n[[site]]\ndomains = [\"b\"]\nproxy = { upstreams = [\"x\"], connect_timeout = 5 }\n";
        let at = text.find("5 }").unwrap_or(0);
        assert_eq!(
            key_of_span(text, &(at..at + 1)).as_deref(),
            Some("site[1].proxy.connect_timeout")
        );
        let text =
            "[[site]]\ndomains = [\"a\"]\n[site.proxy]\nupstreams = [\"x\"]\nread_timeout = 5\n";
        let at = text.find("= 5").unwrap_or(0) + 2;
        assert_eq!(
            key_of_span(text, &(at..at + 1)).as_deref(),
            Some("site[0].proxy.read_timeout")
        );
    }

    #[test]
    fn messages_in_user_words() {
        assert_eq!(
            in_user_words(
                "invalid type: integer `5`, expected a string",
                "site[0].proxy.connect_timeout"
            ),
            "expected a duration like \"5s\" (in quotes; units ms, s, m, h, d), got 5"
        );
        assert_eq!(
            in_user_words(
                "invalid type: string \"many\", expected usize",
                "limits.max_connections"
            ),
            "expected a whole number, 0 or more, got \"many\""
        );
        assert_eq!(
            in_user_words(
                "invalid type: string \"yes\", expected a boolean",
                "site[0].redirect.keep_path"
            ),
            "expected true or false, got \"yes\""
        );
        assert_eq!(
            in_user_words(
                "invalid type: string \"a\", expected a sequence",
                "site[0].domains"
            ),
            "expected a list in brackets, like [\"a\", \"b\"], got \"a\""
        );
        assert_eq!(
            in_user_words("missing field `to`", "x"),
            "missing field `to`"
        );
    }

    #[test]
    fn a_single_site_table_says_to_write_two_brackets() {
        let text = "[storage]\npath = \"/tmp\"\n\n[site]\ndomains = [\"a\"]\n";
        let (span, key, message) = single_table_for_array(text).unwrap_or_default();
        assert_eq!(key, "site");
        assert_eq!(&text[span], "[site]");
        assert!(message.contains("[[site]]"), "{message}");
        assert!(single_table_for_array("[[site]]\ndomains = [\"a\"]\n").is_none());
    }
}
