//! The file's `[[site]]` tables: each checked by [`sites::SiteSpec::validate`], a refusal
//! turned into file:line:key by finding the field's span in the TOML text; and a domain belongs
//! to one site across the file.

use std::collections::HashMap;
use std::ops::Range;

use sites::{FieldError, FieldPath, Segment, Site, SiteEnv, SiteSpec};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ConfigError, Ctx};

pub(super) fn sites(
    ctx: &Ctx<'_>,
    specs: &[SiteSpec],
    env: &SiteEnv,
) -> Result<Vec<Site>, ConfigError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let site = spec.validate(env).map_err(|e| site_err(ctx, index, &e))?;
        for (i, name) in site.domains.iter().enumerate() {
            if let Some(other) = seen.insert(name.to_string(), index) {
                let e = FieldError::new(
                    FieldPath::root().key("domains").index(i),
                    format!("{name} is already in site[{other}]; a domain belongs to one site"),
                );
                return Err(site_err(ctx, index, &e));
            }
        }
        out.push(site);
    }
    Ok(out)
}

/// `e` inside `site[index]` as a config error: the key `site[index].path`, the line of the
/// field (or of the nearest enclosing table the file spells out).
fn site_err(ctx: &Ctx<'_>, index: usize, e: &FieldError) -> ConfigError {
    let key = if e.path.is_root() {
        format!("site[{index}]")
    } else {
        format!("site[{index}].{}", e.path.dotted())
    };
    ctx.err(field_span(ctx.text, index, &e.path), key, e.message.clone())
}

/// The span of `path` inside the `index`-th `[[site]]` table of `text`, or of its nearest
/// ancestor present in the text (a key left to its default has no span of its own).
pub(super) fn field_span(text: &str, index: usize, path: &FieldPath) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    field_span_in(&doc, index, path)
}

/// The span of each site's `path` (or nearest ancestor), for `count` sites, parsing `text` once.
pub(super) fn field_spans(text: &str, count: usize, path: &FieldPath) -> Vec<Option<Range<usize>>> {
    match DeTable::parse(text) {
        Ok(doc) => (0..count).map(|i| field_span_in(&doc, i, path)).collect(),
        Err(_) => vec![None; count],
    }
}

fn field_span_in(
    doc: &Spanned<DeTable<'_>>,
    index: usize,
    path: &FieldPath,
) -> Option<Range<usize>> {
    let site = doc.get_ref().get("site")?.get_ref().get(index)?;
    let mut at: &Spanned<DeValue<'_>> = site;
    for segment in path.segments() {
        let next = match segment {
            Segment::Key(key) => at.get_ref().get(key.as_str()),
            Segment::Index(i) => at.get_ref().get(*i),
        };
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    Some(at.span())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_nested_fields() {
        let text = "[[site]]\ndomains = [\"a\"]\n\n[[site]]\ndomains = [\"b\",\n  \"c\"]\nproxy = { upstreams = [\"x\"] }\n[site.redirect]\nto = \"y\"\n";
        let line = |r: Range<usize>| text[..r.start].matches('\n').count() + 1;
        let span = |p: FieldPath| line(field_span(text, 1, &p).unwrap());
        assert_eq!(span(FieldPath::root().key("domains").index(1)), 6);
        assert_eq!(span(FieldPath::of(&["proxy", "upstreams"])), 7);
        assert_eq!(span(FieldPath::of(&["redirect", "to"])), 9);
        // Missing keys fall back to the nearest table that exists.
        assert_eq!(span(FieldPath::of(&["redirect", "status"])), 8);
        assert!(field_span(text, 2, &FieldPath::root()).is_none());
    }
}
