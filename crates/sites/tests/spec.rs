//! One site model for TOML and JSON: the same keys read the same spec, unknown keys are refused
//! in both, and validation names the field as a dotted key and a JSON pointer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sites::{SiteAction, SiteEnv, SiteSpec, TlsChoice};

fn env(base: Option<&str>) -> SiteEnv {
    SiteEnv {
        base: base.map(Into::into),
        acme: true,
        dns01: false,
        default_key_type: certs::KeyType::EcdsaP384,
    }
}

#[test]
fn toml_and_json_read_the_same_spec() {
    let toml_text = "domains = [\"a.example\", \"www.a.example\"]\nredirect = { to = \"https://b.example\", status = 308 }\nhsts = { max_age = \"1d\" }\ntls = { cert = \"a.pem\", key = \"/k/a.key\" }\n";
    let json_text = r#"{"domains": ["a.example", "www.a.example"], "redirect": {"to": "https://b.example", "status": 308},
        "hsts": {"max_age": "1d"}, "tls": {"cert": "a.pem", "key": "/k/a.key"}}"#;
    let from_toml: SiteSpec = toml::from_str(toml_text).unwrap();
    let from_json: SiteSpec = serde_json::from_str(json_text).unwrap();
    assert_eq!(from_toml, from_json);
    // Round trip: only what was written comes back.
    let out = serde_json::to_value(&from_json).unwrap();
    assert_eq!(
        out,
        serde_json::from_str::<serde_json::Value>(json_text).unwrap()
    );

    let site = from_toml.validate(&env(Some("/etc/fleetgate"))).unwrap();
    assert_eq!(site.id(), "a.example");
    assert_eq!(site.key_type, certs::KeyType::EcdsaP384);
    assert!(matches!(
        site.action,
        SiteAction::Redirect {
            status: 308,
            keep_path: true,
            ..
        }
    ));
    assert_eq!(
        site.tls,
        TlsChoice::Files {
            cert: "/etc/fleetgate/a.pem".into(),
            key: "/k/a.key".into()
        }
    );
    // Without a folder (JSON from the API) relative paths are refused.
    let e = from_json.validate(&env(None)).unwrap_err();
    assert_eq!(e.path.json_pointer(), "/tls/cert");
    assert!(e.message.contains("absolute path"), "{e}");
}

#[test]
fn unknown_keys_are_refused_in_json_too() {
    for text in [
        r#"{"domains": ["a.example"], "redirects": {"to": "https://b.example"}}"#,
        r#"{"domains": ["a.example"], "proxy": {"upstreams": ["http://h"], "retry": 1}}"#,
    ] {
        assert!(serde_json::from_str::<SiteSpec>(text).is_err(), "{text}");
    }
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"domains": []}"#, "/domains", "at least one domain"),
        (
            r#"{"domains": ["ok.example", "bad_name"]}"#,
            "/domains/1",
            "bad_name",
        ),
        (
            r#"{"domains": ["a.example", "A.example"], "respond": {}}"#,
            "/domains/1",
            "already",
        ),
        (r#"{"domains": ["a.example"]}"#, "", "needs an action"),
        (
            r#"{"domains": ["a.example"], "respond": {}, "redirect": {"to": "https://b"}}"#,
            "/respond",
            "not both",
        ),
        (
            r#"{"domains": ["a.example"], "redirect": {"to": "b.example"}}"#,
            "/redirect/to",
            "absolute URL",
        ),
        (
            r#"{"domains": ["a.example"], "proxy": {"upstreams": ["http://h", "ftp://x"]}}"#,
            "/proxy/upstreams/1",
            "",
        ),
        (
            r#"{"domains": ["*.a.example"], "respond": {}}"#,
            "/domains",
            "wildcard",
        ),
        (
            r#"{"domains": ["a.example"], "respond": {}, "key_type": "dsa"}"#,
            "/key_type",
            "ecdsa-p256",
        ),
    ];
    let edge_rules = [
        (
            r#"{"domains": ["a.example"], "redirect": {"to": "https://b.example/#top"}}"#,
            "/redirect/to",
            "fragment",
        ),
        (
            r#"{"domains": ["a.example"], "redirect": {"to": "https://b.example/?q=1"}}"#,
            "/redirect/to",
            "query",
        ),
        (
            r#"{"domains": ["a.example"], "redirect": {"to": "https://bad host/"}}"#,
            "/redirect/to",
            "",
        ),
    ];
    for (text, pointer, message) in cases.into_iter().chain(edge_rules) {
        let spec: SiteSpec = serde_json::from_str(text).unwrap();
        let e = spec.validate(&env(None)).unwrap_err();
        assert_eq!(e.path.json_pointer(), pointer, "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
}
