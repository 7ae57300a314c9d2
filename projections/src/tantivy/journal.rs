//! The journal of one tantivy generation: its lookups and dead letters, as JSON lines in
//! `journal.jsonl` beside the index, committed with the index.
//!
//! A commit first appends the batch's lines to the journal (and syncs it), then commits the
//! index with the journal's new length in the commit payload. The committed journal is the
//! prefix of that length: a crash between the two leaves bytes past it, which the next
//! writer cuts off on open. So lookups and letters are exactly as committed as the documents
//! and the checkpoint.

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DeadLetter, Error, Result};

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A lookup set.
    Set(String, String),
    /// A lookup removed.
    Remove(String),
    /// An event parked.
    Park(Box<DeadLetter>),
    /// A letter removed (requeued or skipped).
    Unpark(Uuid),
}

/// What a committed journal holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) lookups: HashMap<String, String>,
    pub(crate) letters: HashMap<Uuid, DeadLetter>,
}

impl State {
    pub(crate) fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Set(key, value) => {
                self.lookups.insert(key, value);
            }
            Entry::Remove(key) => {
                self.lookups.remove(&key);
            }
            Entry::Park(letter) => {
                self.letters.insert(letter.event_id, *letter);
            }
            Entry::Unpark(id) => {
                self.letters.remove(&id);
            }
        }
    }

    /// The letters in log order.
    pub(crate) fn letters(&self) -> Vec<DeadLetter> {
        let mut letters: Vec<DeadLetter> = self.letters.values().cloned().collect();
        letters.sort_by_key(|l| l.position);
        letters
    }
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("journal.jsonl")
}

/// Reads the committed prefix (`len` bytes) of a generation's journal.
pub(crate) fn read(dir: &Path, len: u64) -> Result<State> {
    let mut state = State::default();
    if len == 0 {
        return Ok(state);
    }
    let file = fs::File::open(path(dir)).map_err(Error::Io)?;
    let mut bytes = Vec::new();
    Read::take(file, len)
        .read_to_end(&mut bytes)
        .map_err(Error::Io)?;
    if (bytes.len() as u64) < len {
        return Err(Error::Corrupt {
            what: format!(
                "{} is shorter ({} bytes) than its commit says ({len})",
                path(dir).display(),
                bytes.len()
            ),
        });
    }
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let entry: Entry = serde_json::from_slice(line).map_err(|_| Error::Corrupt {
            what: format!("a line of {}", path(dir).display()),
        })?;
        state.apply(entry);
    }
    Ok(state)
}

/// Cuts off what a crash left past the committed prefix.
pub(crate) fn truncate(dir: &Path, len: u64) -> Result<()> {
    match fs::OpenOptions::new().write(true).open(path(dir)) {
        Ok(file) => {
            if file.metadata().map_err(Error::Io)?.len() > len {
                file.set_len(len).map_err(Error::Io)?;
                file.sync_all().map_err(Error::Io)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}

/// Appends encoded lines at `len` and syncs; returns the new length.
pub(crate) fn append(dir: &Path, len: u64, lines: &[Vec<u8>]) -> Result<u64> {
    if lines.is_empty() {
        return Ok(len);
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path(dir))
        .map_err(Error::Io)?;
    // Whatever lies past the committed length is from a commit that did not happen.
    file.set_len(len).map_err(Error::Io)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len)).map_err(Error::Io)?;
    let mut buffer = Vec::new();
    for line in lines {
        buffer.extend_from_slice(line);
        buffer.push(b'\n');
    }
    file.write_all(&buffer).map_err(Error::Io)?;
    file.sync_all().map_err(Error::Io)?;
    Ok(len + buffer.len() as u64)
}

/// Encodes an entry as one line (without the newline).
pub(crate) fn encode(entry: &Entry) -> Vec<u8> {
    // Entries hold strings, ids and plain values only: encoding cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}
