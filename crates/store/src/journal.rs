//! The directory backend's change journal: how processes sharing one directory hear about each
//! other's writes within a fraction of a second.
//!
//! Every write appends one line, `P <instance> <key>` or `D <instance> <key>`, to
//! `<root>/changes.log` with `O_APPEND` (one `write` call per line, well under `PIPE_BUF`, so lines
//! from different processes never interleave on a local filesystem). A follower task in each
//! process polls the file's length every [`POLL`], reads new complete lines and turns other
//! instances' lines into [`Change`] events. The appender that pushes the file past [`ROTATE_AT`]
//! renames it to `changes.log.1`; followers keep their descriptor open, drain the old file to its
//! end, then switch to the new one, so nothing is missed across a rotation.
//!
//! On NFS, `O_APPEND` is not atomic across clients: a torn line is skipped (it does not parse as
//! a key), and the periodic resync that every subscriber runs anyway covers it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{Change, StorageKey};

/// How often followers look for new lines.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// Size past which the journal is rotated.
const ROTATE_AT: u64 = 1 << 20;

pub(crate) fn path(root: &Path) -> PathBuf {
    root.join("changes.log")
}

/// Append one change. Failure to journal never fails the write it describes: it only delays
/// other processes until their resync.
pub(crate) fn append(root: &Path, instance: &str, change: &Change) {
    let (op, key) = match change {
        Change::Put(k) => ('P', k),
        Change::Deleted(k) => ('D', k),
        // Only ever raised locally, for this process's subscribers; nothing to tell the others.
        Change::Missed => return,
    };
    let line = format!("{op} {instance} {}\n", key.as_str());
    let path = path(root);
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(line.as_bytes())?;
            f.metadata()
        });
    match result {
        Ok(meta) if meta.len() > ROTATE_AT => {
            // Several appenders may race here; a rename of an already-renamed file fails
            // harmlessly, and at worst one short journal generation is rotated early.
            let _ = fs::rename(&path, root.join("changes.log.1"));
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not append to the change journal"),
    }
}

/// Follows the journal from its current end.
pub(crate) struct Follower {
    root: PathBuf,
    instance: String,
    reader: Option<(BufReader<File>, u64)>,
    partial: String,
}

impl Follower {
    pub(crate) fn new(root: PathBuf, instance: String) -> Follower {
        let mut follower = Follower {
            root,
            instance,
            reader: None,
            partial: String::new(),
        };
        // Start at the end: history before this process subscribed is not replayed.
        if let Ok(mut file) = File::open(path(&follower.root))
            && let (Ok(end), Ok(meta)) = (file.seek(SeekFrom::End(0)), file.metadata())
        {
            follower.reader = Some((BufReader::new(file), meta.ino()));
            let _ = end;
        }
        follower
    }

    /// Read what was appended since the last call; return other instances' changes.
    pub(crate) fn poll(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        let current = fs::metadata(path(&self.root)).ok().map(|m| m.ino());
        if let Some((reader, _)) = &mut self.reader {
            let chunk = reader_lines(reader);
            self.read_lines(chunk, &mut out);
        }
        let rotated = match (&self.reader, current) {
            (Some((_, ino)), Some(now)) => *ino != now,
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            // The old file was drained above; the new one is read from its start.
            self.partial.clear();
            if let Ok(file) = File::open(path(&self.root))
                && let Ok(meta) = file.metadata()
            {
                let mut reader = BufReader::new(file);
                self.read_lines(reader_lines(&mut reader), &mut out);
                self.reader = Some((reader, meta.ino()));
            }
        }
        out
    }

    fn read_lines(&mut self, chunk: io::Result<String>, out: &mut Vec<Change>) {
        let Ok(chunk) = chunk else { return };
        self.partial.push_str(&chunk);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let mut parts = line.trim_end().splitn(3, ' ');
            let (Some(op), Some(instance), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if instance == self.instance {
                continue;
            }
            let Ok(key) = StorageKey::new(key) else {
                continue;
            };
            match op {
                "P" => out.push(Change::Put(key)),
                "D" => out.push(Change::Deleted(key)),
                _ => {}
            }
        }
    }
}

fn reader_lines(reader: &mut BufReader<File>) -> io::Result<String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Ok(text);
        }
        text.push_str(&line);
    }
}

/// Run a follower until the store's event sender is dropped.
pub(crate) fn spawn(root: PathBuf, instance: String, events: Weak<broadcast::Sender<Change>>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut follower =
            match tokio::task::spawn_blocking(move || Follower::new(root, instance)).await {
                Ok(f) => f,
                Err(_) => return,
            };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(sender) = events.upgrade() else {
                return;
            };
            let polled = tokio::task::spawn_blocking(move || {
                let changes = follower.poll();
                (follower, changes)
            })
            .await;
            let Ok((f, changes)) = polled else { return };
            follower = f;
            for change in changes {
                let _ = sender.send(change);
            }
        }
    });
}
