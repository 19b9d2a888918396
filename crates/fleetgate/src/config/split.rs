//! The `[[site]]` tables of a file cut out of it, so that each is parsed on its own: `toml`
//! builds a spanned tree of the whole document before deserializing (about 7 KB per site, so
//! 680 MB for 100,000 sites at once), where one site at a time needs a few kilobytes.
//!
//! The cut follows TOML's own tokens (`toml_parser`'s lexer, the one `toml` uses): a header is
//! a `[` at the start of a line outside any value. A `[[site]]` header starts a site; a header
//! whose first key is `site` (`[site.redirect]`) belongs to the last site started, as TOML says;
//! every other section, and whatever comes before the first header, is the rest of the file.
//! The rest keeps its byte offsets (each site's bytes become spaces, its newlines stay), so
//! nothing shifts. Anything out of the ordinary (a quoted `"site"` key, `[site]` alone, a
//! `[site.x]` before any `[[site]]`) is left to the whole-document parse, and so is every
//! error: this is only a faster road to the same result, never a different one.

use std::ops::Range;

use toml_parser::Source;
use toml_parser::lexer::TokenKind;

/// A file cut into its sites and the rest.
#[derive(Debug)]
pub(super) struct Split {
    /// The file with every site's bytes blanked out (same length, same lines).
    pub(super) rest: String,
    /// Each site's sections, in file order, as byte ranges of the file.
    pub(super) sites: Vec<Vec<Range<usize>>>,
}

impl Split {
    /// The text of site `i`: its sections, in order.
    pub(super) fn site_text(&self, text: &str, i: usize) -> String {
        let ranges = &self.sites[i];
        let mut out = String::with_capacity(ranges.iter().map(|r| r.len() + 1).sum());
        for r in ranges {
            out.push_str(&text[r.clone()]);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// What a section header is.
#[derive(Debug, PartialEq)]
enum Header {
    /// `[[site]]`
    NewSite,
    /// `[site.x]`, `[[site.x]]`: part of the last site.
    InSite,
    Other,
}

/// Cuts `text`; `None` when it has no `[[site]]` or is out of the ordinary (see the module).
pub(super) fn split(text: &str) -> Option<Split> {
    let mut headers: Vec<(usize, Header)> = Vec::new();
    // Nesting of `[`/`{` inside values; a header can only start at depth 0.
    let mut depth = 0usize;
    let mut line_start = true;
    let mut tokens = Source::new(text).lex().peekable();
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                let start = token.span().start();
                let array = tokens
                    .next_if(|t| t.kind() == TokenKind::LeftSquareBracket)
                    .is_some();
                // The keys up to the closing bracket: `site` (bare) first, or something else.
                let mut keys = Vec::new();
                let mut quoted_site = false;
                for t in tokens.by_ref() {
                    match t.kind() {
                        TokenKind::RightSquareBracket => break,
                        TokenKind::Atom => keys.push(&text[t.span().start()..t.span().end()]),
                        TokenKind::BasicString | TokenKind::LiteralString => {
                            let raw = &text[t.span().start()..t.span().end()];
                            quoted_site |= raw.contains("site");
                            keys.push(raw);
                        }
                        TokenKind::Dot | TokenKind::Whitespace => {}
                        _ => return None,
                    }
                }
                if quoted_site {
                    return None;
                }
                if array {
                    tokens.next_if(|t| t.kind() == TokenKind::RightSquareBracket)?;
                }
                let header = match (keys.first(), keys.len(), array) {
                    (Some(&"site"), 1, true) => Header::NewSite,
                    // `[site]` alone: the single-table mistake, said by the whole parse.
                    (Some(&"site"), 1, false) => return None,
                    (Some(&"site"), _, _) => Header::InSite,
                    _ => Header::Other,
                };
                headers.push((start, header));
                line_start = false;
                continue;
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
            }
            TokenKind::Eof => break,
            _ => {}
        }
        line_start = false;
    }
    if depth != 0 || !headers.iter().any(|(_, h)| *h == Header::NewSite) {
        return None;
    }
    let mut sites: Vec<Vec<Range<usize>>> = Vec::new();
    let mut rest = text.as_bytes().to_vec();
    for (i, (start, header)) in headers.iter().enumerate() {
        let end = headers.get(i + 1).map_or(text.len(), |(next, _)| *next);
        match header {
            Header::NewSite => sites.push(std::iter::once(*start..end).collect()),
            Header::InSite => sites.last_mut()?.push(*start..end),
            Header::Other => continue,
        }
        for b in &mut rest[*start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII spaces, at whole-token boundaries.
    let rest = String::from_utf8(rest).ok()?;
    Some(Split { rest, sites })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sites_of(text: &str) -> Vec<String> {
        let s = split(text).unwrap();
        assert_eq!(s.rest.len(), text.len());
        assert_eq!(s.rest.matches('\n').count(), text.matches('\n').count());
        (0..s.sites.len()).map(|i| s.site_text(text, i)).collect()
    }

    #[test]
    fn sites_and_their_subtables_are_cut_out_and_the_rest_keeps_its_offsets() {
        let text = "node = \"a\"\n[listen]\nhttp = \"x\"\n\n[[site]]\ndomains = [\"a\"]\n[site.redirect]\nto = \"b\"\n\n[admin]\nlisten = \"y\"\n[[site]] # two\ndomains = [\n  \"c\",\n]\n[site.proxy]\nupstreams = [\"u\"]\n";
        let s = split(text).unwrap();
        assert_eq!(s.sites.len(), 2);
        assert_eq!(
            s.site_text(text, 0),
            "[[site]]\ndomains = [\"a\"]\n[site.redirect]\nto = \"b\"\n\n"
        );
        assert_eq!(
            s.site_text(text, 1),
            "[[site]] # two\ndomains = [\n  \"c\",\n]\n[site.proxy]\nupstreams = [\"u\"]\n"
        );
        assert!(s.rest.contains("[listen]\nhttp = \"x\"") && s.rest.contains("[admin]"));
        assert!(!s.rest.contains("site"));
        assert_eq!(s.rest.find("[admin]"), text.find("[admin]"));
    }

    #[test]
    fn a_subtable_after_another_section_belongs_to_the_last_site() {
        let text =
            "[[site]]\ndomains = [\"a\"]\n[admin]\nlisten = \"y\"\n[site.redirect]\nto = \"b\"\n";
        let sites = sites_of(text);
        assert_eq!(sites.len(), 1);
        assert!(sites[0].contains("[site.redirect]") && !sites[0].contains("admin"));
    }

    #[test]
    fn brackets_inside_values_and_strings_are_not_headers() {
        let text = "x = [\n[1],\n[2]]\ns = \"\"\"\n[[site]]\n\"\"\"\n[[site]]\ndomains = [\"a\"]\nt = { a = [\n\"[[site]]\"] }\n";
        let sites = sites_of(text);
        assert_eq!(sites.len(), 1);
        assert!(sites[0].starts_with("[[site]]\ndomains"));
    }

    #[test]
    fn out_of_the_ordinary_files_are_left_to_the_whole_parse() {
        for text in [
            "[site]\ndomains = [\"a\"]\n",
            "[site.redirect]\nto = \"b\"\n[[site]]\ndomains = [\"a\"]\n",
            "[[\"site\"]]\ndomains = [\"a\"]\n",
            "[[site]\ndomains = [\"a\"]\n",
            "x = [\n[[site]]\ndomains = [\"a\"]\n",
            "node = \"a\"\n",
        ] {
            assert!(split(text).is_none(), "{text}");
        }
    }
}
