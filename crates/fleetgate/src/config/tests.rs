//! The config file's parsing and error messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use sites::{SiteAction, TlsChoice, parse_duration, parse_size};

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/fleetgate/test.toml"), text)
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const ACME: &str = "[acme]\ndirectory = \"https://acme.example/dir\"\n";

#[test]
fn full_example_parses() {
    let text = format!(
        "{ACME}\n[[site]]\ndomains = [\"Example.NET\", \"www.example.net\"]\nredirect = {{ to = \"https://example.com\", status = 308, keep_path = false }}\n\n[[site]]\ndomains = [\"example.com\"]\ntls = {{ cert = \"a.pem\", key = \"a.key\" }}\nrespond = {{ status = 200, body = \"ok\" }}\nhsts = true\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.sites.len(), 2);
    assert_eq!(config.sites[0].domains[0].as_str(), "example.net");
    assert!(matches!(
        config.sites[0].action,
        SiteAction::Redirect {
            status: 308,
            keep_path: false,
            ..
        }
    ));
    assert_eq!(config.sites[0].tls, TlsChoice::Acme);
    assert_eq!(
        config.sites[1].tls,
        TlsChoice::Files {
            cert: "/etc/fleetgate/a.pem".into(),
            key: "/etc/fleetgate/a.key".into()
        }
    );
    assert!(config.sites[1].hsts.is_some());
    assert_eq!(config.listen_https, "0.0.0.0:443".parse().unwrap());
    let certs = config.managed_certs();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0].id, "example.net");
}

#[test]
fn storage_ca_root_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, _) = testkit::ca_and_leaf(&["db.test"]);
    std::fs::write(dir.path().join("root.pem"), root).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
    let file = dir.path().join("f.toml");
    let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
    let pg = "kind = \"postgres\"\nurl = \"postgres://f@db/f?sslmode=require\"\n";
    let ok = Config::parse(
        &file,
        &format!("[storage]\n{pg}ca_root = \"root.pem\"\n{site}"),
    )
    .unwrap();
    assert!(matches!(
        ok.storage,
        StorageConfig::Postgres { ca_root: Some(ref p), .. } if p == &dir.path().join("root.pem")
    ));
    for (extra, line, want) in [
        (
            format!("{pg}ca_root = \"empty.pem\"\n"),
            4,
            "holds no PEM certificate",
        ),
        (format!("{pg}ca_root = \"missing.pem\"\n"), 4, "cannot read"),
        (
            "kind = \"dir\"\nca_root = \"root.pem\"\n".to_owned(),
            3,
            "only used with",
        ),
    ] {
        let e = Config::parse(&file, &format!("[storage]\n{extra}{site}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(":{line}: storage.ca_root: ")) && e.contains(want),
            "{e}"
        );
    }
}

#[test]
fn proxy_protocol_sources_are_checked() {
    let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
    let config = parse(&format!(
        "[listen]\nproxy_protocol_from = [\"10.1.0.0/16\", \"192.0.2.7\"]\n{site}"
    ))
    .unwrap();
    let from: Vec<String> = config
        .proxy_protocol_from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(from, ["10.1.0.0/16", "192.0.2.7/32"]);
    let e = err(&format!(
        "[listen]\nproxy_protocol_from = [\"10.0.0.0/8\",\n  \"10.0.0.0/40\"]\n{site}"
    ));
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:3: listen.proxy_protocol_from[1]: "),
        "{e}"
    );
}

#[test]
fn workers_are_one_per_core_by_default_and_bounded() {
    let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(parse(site).unwrap().workers, cores);
    assert_eq!(
        parse(&format!("[listen]\nworkers = 0\n{site}"))
            .unwrap()
            .workers,
        0
    );
    assert_eq!(
        parse(&format!("[listen]\nworkers = 4\n{site}"))
            .unwrap()
            .workers,
        4
    );
    let e = err(&format!("[listen]\nworkers = 5000\n{site}"));
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:2: listen.workers: at most 1024"),
        "{e}"
    );
    let e = err(&format!("[listen]\nworkers = -1\n{site}"));
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:2: listen.workers"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = err("[listen]\nhttp = \"127.0.0.1:80\"\nhtps = \"127.0.0.1:443\"\n");
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:3: listen.htps: unknown field"),
        "{e}"
    );
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\nrespond = {}\n[[site]]\ndomains = [\"b.example\"]\nredirects = 1\n",
    );
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:6: site[1].redirects: unknown field"),
        "{e}"
    );
}

#[test]
fn bad_domain_names_site_index_and_line() {
    let e = err(
        "[[site]]\ndomains = [\"ok.example\"]\ntls = \"internal\"\nrespond = {}\n\n[[site]]\ndomains = [\"bad_name.example\"]\ntls = \"internal\"\nrespond = {}\n",
    );
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:7: site[1].domains[0]:"),
        "{e}"
    );
    assert!(e.contains("bad_name.example"), "{e}");
}

#[test]
fn duplicate_domain_across_sites() {
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\n[[site]]\ndomains = [\"A.example\"]\ntls = \"internal\"\nrespond = {}\n",
    );
    assert!(
        e.contains("site[1].domains[0]") && e.contains("already in site[0]"),
        "{e}"
    );
}

#[test]
fn redirect_status_must_be_a_redirect() {
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nredirect = { to = \"https://b.example\", status = 200 }\n",
    );
    assert!(
        e.contains(":4: site[0].redirect.status: expected 301, 302, 307 or 308"),
        "{e}"
    );
}

#[test]
fn redirect_target_must_be_absolute() {
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nredirect = { to = \"b.example\" }\n",
    );
    assert!(e.contains("site[0].redirect.to"), "{e}");
}

#[test]
fn acme_site_needs_acme_section() {
    let e = err("[[site]]\ndomains = [\"a.example\"]\nrespond = {}\n");
    assert!(e.contains("site[0].tls") && e.contains("[acme]"), "{e}");
}

#[test]
fn acme_rejects_wildcards() {
    let e = err(&format!(
        "{ACME}[[site]]\ndomains = [\"*.a.example\"]\nrespond = {{}}\n"
    ));
    assert!(e.contains("wildcard"), "{e}");
}

#[test]
fn site_needs_exactly_one_action() {
    assert!(
        err("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\n")
            .contains("needs an action")
    );
    let both = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\nredirect = { to = \"https://b.example\" }\n",
    );
    assert!(both.contains("not both"), "{both}");
}

#[test]
fn bad_values_are_explained() {
    assert!(
        err("[listen]\nhttp = \"nonsense\"\n").contains(":2: listen.http: expected an address")
    );
    assert!(err("[storage]\nkind = \"s3\"\n").contains("storage.kind"));
    assert!(err("[storage]\nkind = \"postgres\"\n").contains("storage.url"));
    assert!(err("[storage]\nkind = \"redis\"\nurl = \"http://x\"\n").contains("storage.url"));
    assert!(err(&format!("{ACME}challenges = [\"dns-01\"]\n")).contains("acme.challenges"));
    assert!(err("[limits]\nidle_timeout = \"forever\"\n").contains("limits.idle_timeout"));
    assert!(err("[log]\nformat = \"xml\"\n").contains("log.format"));
    assert!(
        err("[[site]]\ndomains = []\ntls = \"internal\"\nrespond = {}\n")
            .contains("at least one domain")
    );
    assert!(
        err("[[site]]\ndomains = [\"a.example\"]\ntls = \"magic\"\nrespond = {}\n")
            .contains("site[0].tls")
    );
    assert!(err("not toml at all").starts_with("/etc/fleetgate/test.toml:1"));
}

#[test]
fn big_sites_are_split_into_several_certificates() {
    let names: Vec<String> = (0..250).map(|i| format!("\"d{i}.example\"")).collect();
    let text = format!(
        "[[site]]\ndomains = [{}]\ntls = \"internal\"\nrespond = {{}}\n",
        names.join(",")
    );
    let certs = parse(&text).unwrap().managed_certs();
    assert_eq!(
        certs.iter().map(|c| c.domains.len()).collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(
        parse_duration("365d"),
        Some(Duration::from_secs(365 * 86_400))
    );
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("s"), None);
}

#[test]
fn proxy_site_defaults_and_every_key() {
    let config = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://10.0.0.5:8080\"] }\n").unwrap();
    let SiteAction::Proxy { proxy, ca_root, .. } = &config.sites[0].action else {
        panic!()
    };
    assert_eq!(
        **proxy,
        edge::Proxy::new(vec!["http://10.0.0.5:8080".into()])
    );
    assert_eq!(*ca_root, None);
    assert!(!config.sites[0].access_log);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), "").unwrap();
    let text = "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\naccess_log = true\nproxy = { upstreams = [\"http://10.0.0.5:8080\", \"https://app.internal\"], policy = \"ip_hash\", health = { path = \"/healthz\", interval = \"2s\", timeout = \"1s\" }, host_header = \"app.internal\", connect_timeout = \"1s\", response_header_timeout = \"30s\", idle_timeout = \"20s\", max_body = \"10MiB\", fail_after = 5, fail_timeout = \"3s\", retries = 2, ca_root = \"root.pem\" }\n";
    let config = Config::parse(&dir.path().join("f.toml"), text).unwrap();
    let SiteAction::Proxy { proxy, ca_root, .. } = &config.sites[0].action else {
        panic!()
    };
    assert_eq!(proxy.policy, edge::Policy::IpHash);
    assert_eq!(
        proxy.health,
        Some(edge::HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1)
        })
    );
    assert_eq!(
        proxy.host_header,
        edge::HostHeader::Literal("app.internal".into())
    );
    assert_eq!(proxy.connect_timeout, Duration::from_secs(1));
    assert_eq!(proxy.response_header_timeout, Duration::from_secs(30));
    assert_eq!(proxy.idle_timeout, Duration::from_secs(20));
    assert_eq!(proxy.max_body, Some(10 << 20));
    assert_eq!(
        (proxy.fail_after, proxy.fail_timeout, proxy.retries),
        (5, Duration::from_secs(3), 2)
    );
    assert_eq!(
        ca_root.as_deref(),
        Some(dir.path().join("root.pem").as_path())
    );
    assert!(config.sites[0].access_log);

    let unlimited = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://h\"], max_body = 0, host_header = \"upstream\" }\n").unwrap();
    let SiteAction::Proxy { proxy, .. } = &unlimited.sites[0].action else {
        panic!()
    };
    assert_eq!(proxy.max_body, None);
    assert_eq!(proxy.host_header, edge::HostHeader::Upstream);
}

#[test]
fn proxy_errors_name_the_key() {
    let site = |proxy: &str| {
        format!("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = {proxy}\n")
    };
    let cases = [
        (
            "{ upstreams = [] }",
            "site[0].proxy.upstreams: needs at least one",
        ),
        (
            "{ upstreams = [\"10.0.0.5:80\"] }",
            "site[0].proxy.upstreams[0]",
        ),
        ("{ upstreams = [\"http://h/app\"] }", "no path"),
        (
            "{ upstreams = [\"http://h\"], policy = \"random\" }",
            "site[0].proxy.policy",
        ),
        (
            "{ upstreams = [\"http://h\"], health = { path = \"healthz\" } }",
            "site[0].proxy.health.path",
        ),
        (
            "{ upstreams = [\"http://h\"], health = { path = \"/h\", interval = \"0s\" } }",
            "site[0].proxy.health.interval",
        ),
        (
            "{ upstreams = [\"http://h\"], connect_timeout = \"soon\" }",
            "site[0].proxy.connect_timeout",
        ),
        (
            "{ upstreams = [\"http://h\"], max_body = \"lots\" }",
            "site[0].proxy.max_body",
        ),
        (
            "{ upstreams = [\"http://h\"], host_header = \"a b\" }",
            "site[0].proxy.host_header",
        ),
        (
            "{ upstreams = [\"http://h\"], ca_root = \"/nonexistent.pem\" }",
            "site[0].proxy.ca_root",
        ),
        ("{ upstreams = [\"http://h\"], retry = 1 }", "unknown field"),
    ];
    for (proxy, expected) in cases {
        let e = err(&site(proxy));
        assert!(e.contains(":4: ") && e.contains(expected), "{proxy}: {e}");
    }
    let both = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\nproxy = { upstreams = [\"http://h\"] }\n",
    );
    assert!(
        both.contains("site[0].proxy: a site has one action"),
        "{both}"
    );
}

#[test]
fn sizes() {
    assert_eq!(parse_size("1048576"), Some(1 << 20));
    assert_eq!(parse_size("512KiB"), Some(512 << 10));
    assert_eq!(parse_size("10m"), Some(10 << 20));
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("10MB"), Some(10_000_000));
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size("MiB"), None);
    assert_eq!(parse_size("1TiB"), None);
}

#[test]
fn no_sites_is_valid() {
    let config =
        parse("[listen]\nhttp = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:8443\"\n").unwrap();
    assert!(config.sites.is_empty() && config.site_specs.is_empty());
    assert!(config.managed_certs().is_empty());
    assert!(parse("").unwrap().sites.is_empty());
}

#[test]
fn proxy_read_timeout_and_underscore_fields_are_kept() {
    let config = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://h\"], read_timeout = \"45s\", drop_underscore_fields = false }\n").unwrap();
    let SiteAction::Proxy { proxy, .. } = &config.sites[0].action else {
        panic!()
    };
    assert_eq!(proxy.read_timeout, Duration::from_secs(45));
    assert!(!proxy.drop_underscore_fields);
    let defaults = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://h\"] }\n").unwrap();
    let SiteAction::Proxy { proxy, .. } = &defaults.sites[0].action else {
        panic!()
    };
    assert_eq!(proxy.read_timeout, Duration::from_secs(60));
    assert!(proxy.drop_underscore_fields);
    let limits = parse("[limits]\nsend_timeout = \"15s\"\n").unwrap().limits;
    assert_eq!(limits.send_timeout, Duration::from_secs(15));
    assert!(err("[limits]\nsend_timeout = \"0s\"\n").contains("limits.send_timeout"));
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://h\"], read_timeout = \"0s\" }\n",
    );
    assert!(e.contains(":4: site[0].proxy.read_timeout: "), "{e}");
}

#[test]
fn errors_in_sub_tables_name_their_own_line() {
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\n\n[site.proxy]\nupstreams = [\"http://h\"]\n\n[site.proxy.health]\npath = \"/h\"\ninterval = \"never\"\n",
    );
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:10: site[0].proxy.health.interval: "),
        "{e}"
    );
    let e = err(
        "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\nhsts = { max_age = \"a year\" }\n",
    );
    assert!(
        e.starts_with("/etc/fleetgate/test.toml:5: site[0].hsts.max_age: "),
        "{e}"
    );
    // A key left to its default has no line of its own: the enclosing table's is used.
    let e = err("[[site]]\ndomains = [\"a.example\"]\n\nrespond = {}\n");
    assert!(e.contains("site[0].tls") && e.contains("[acme]"), "{e}");
}

#[test]
fn specs_are_kept_as_written() {
    let config = parse("[[site]]\ndomains = [\"A.example\"]\ntls = \"internal\"\nredirect = { to = \"https://b.example\" }\n").unwrap();
    assert_eq!(config.site_specs[0].domains, ["A.example"]);
    assert_eq!(config.site_specs[0].id(), "a.example");
    assert_eq!(config.file_domains()["a.example"], "a.example");
}

#[test]
fn tls_ticket_key_rotation() {
    assert_eq!(
        parse("").unwrap().ticket_key_rotation,
        Duration::from_secs(12 * 3600)
    );
    assert_eq!(
        parse("[tls]\nticket_key_rotation = \"1h 30m\"\n")
            .unwrap()
            .ticket_key_rotation,
        Duration::from_secs(5400)
    );
    for bad in ["\"30s\"", "\"8d\"", "\"soon\"", "12"] {
        let e = err(&format!("[tls]\nticket_key_rotation = {bad}\n"));
        assert!(e.contains("tls.ticket_key_rotation"), "{e}");
    }
    assert!(
        err("[tls]\nticket_key_rotation = \"30s\"\n")
            .contains("test.toml:2: tls.ticket_key_rotation: expected a duration from 1m to 7d")
    );
    assert!(err("[tls]\nrotation = \"1h\"\n").contains("tls"));
}

/// The sites cut out and parsed one by one come out exactly as the whole document parsed at
/// once, spans of the rest included: the shipped examples, and a file that interleaves sites,
/// their subtables and other sections.
#[test]
fn cut_parse_equals_the_whole_parse() {
    let interleaved = "node = \"n1\" # first\n\n[[site]]\ndomains = [\"a.test\", \"www.a.test\"]\nhttps_redirect = false\n[site.redirect]\nto = \"https://main.test\"\nstatus = 308\n\n[listen]\nhttp = \"127.0.0.1:8080\"\n\n[[site]]\ndomains = [\n  \"b.test\",\n]\n\n[log]\nlevel = \"debug\"\n[site.proxy]\nupstreams = [\"http://127.0.0.1:9000\"]\n";
    let examples = [
        include_str!("../../../../examples/fleetgate.toml"),
        include_str!("../../../../examples/quickstart.toml"),
    ];
    let mut checked = 0;
    for text in examples.into_iter().chain([interleaved]) {
        let Some(cut) = split::split(text) else {
            continue;
        };
        let whole: raw::RawConfig = toml::from_str(text).unwrap();
        let pieces = parse_cut(text, &cut).expect("the cut parses");
        assert_eq!(format!("{pieces:?}"), format!("{whole:?}"), "{text}");
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} files had [[site]] tables");
}

/// A mistake inside one site is reported as the whole-document parse reports it (file, line,
/// key), not from the site's piece alone.
#[test]
fn errors_in_a_cut_site_name_the_line_in_the_file() {
    let text = "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[[site]]\ndomains = [\"a.test\"]\nredirect = { to = \"https://m.test\" }\n\n[[site]]\ndomains = [\"b.test\"]\nredirect = { to = \"https://m.test\", bogus = 1 }\n";
    let e = err(text);
    assert!(e.contains(":10:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}

/// A file large enough to be parsed on every core comes out in order, as the whole document.
#[test]
fn a_large_file_parsed_in_parallel_keeps_its_sites_in_order() {
    let mut text = String::from("[listen]\nhttp = \"127.0.0.1:8080\"\n");
    for i in 0..(PARALLEL_PARSE_FROM + 501) {
        text.push_str(&format!(
            "[[site]]\ndomains = [\"s{i}.test\"]\n[site.redirect]\nto = \"https://m.test/{i}\"\n"
        ));
    }
    let cut = split::split(&text).unwrap();
    let whole: raw::RawConfig = toml::from_str(&text).unwrap();
    let pieces = parse_cut(&text, &cut).unwrap();
    assert_eq!(pieces.sites.len(), PARALLEL_PARSE_FROM + 501);
    assert_eq!(pieces.sites, whole.sites);
}
