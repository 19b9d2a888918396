//! `dist/prometheus-alerts.yml`: valid for Prometheus (`promtool check rules`) and firing as its
//! unit tests say (`promtool test rules dist/prometheus-alerts.test.yml`): certificate expiring
//! in under 7 days, renewal failing, node not heard for a minute, scrape down.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dist())
        .output()
        .expect("run promtool (Debian package prometheus; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid() {
    promtool(&["check", "rules", "prometheus-alerts.yml"]);
}

#[test]
fn the_alert_rules_fire_as_their_unit_tests_say() {
    promtool(&["test", "rules", "prometheus-alerts.test.yml"]);
}
