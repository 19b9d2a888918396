//! `ChildGuard`: log capture, signals, exit status, kill on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use testkit::{ChildGuard, wait_for};
use tokio::process::Command;

/// The state letter in /proc/<pid>/stat ('S' sleeping, 'T' stopped, ...); None once gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn captures_output_and_obeys_signals() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo to-stdout; echo to-stderr >&2; exec tail -f /dev/null",
    ]);
    let mut child = ChildGuard::spawn(cmd, "idler").unwrap();
    child
        .wait_for_log("to-stderr", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(child.log_contents().contains("to-stdout"));
    let pid = child.pid();

    child.stop().unwrap();
    wait_for("process stopped", Duration::from_secs(5), || async {
        (proc_state(pid) == Some('T')).then_some(())
    })
    .await
    .unwrap();
    child.cont().unwrap();
    wait_for("process resumed", Duration::from_secs(5), || async {
        matches!(proc_state(pid), Some('S' | 'R')).then_some(())
    })
    .await
    .unwrap();

    child.term().unwrap();
    let status = child.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.signal(), Some(15));
}

#[tokio::test]
async fn drop_kills_even_a_stopped_child() {
    let mut cmd = Command::new("tail");
    cmd.args(["-f", "/dev/null"]);
    let child = ChildGuard::spawn(cmd, "tail").unwrap();
    let pid = child.pid();
    child.stop().unwrap();
    drop(child);
    // Gone or a zombie awaiting tokio's reaper.
    wait_for("child killed", Duration::from_secs(5), || async {
        matches!(proc_state(pid), None | Some('Z')).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_for_log_fails_fast_when_the_child_exits() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo bye"]);
    let mut child = ChildGuard::spawn(cmd, "short").unwrap();
    let err = child
        .wait_for_log("never printed", Duration::from_secs(30))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("bye"), "log tail expected in {text}");
}
