//! The single writer of one tantivy generation: upserts by id, commits with the checkpoint
//! and fence in the commit payload.

use std::{
    fs,
    sync::{Arc, Mutex},
    time::Instant,
};

use annals::LogPosition;
use serde::{Deserialize, Serialize};
use tantivy::{Index, IndexWriter, Term, directory::MmapDirectory};

use super::{
    TantivyBatch,
    batch::Op,
    journal::{self, Entry},
    model::Inner,
};
use crate::{
    Durability, Error, Fence, Generation, GenerationWriter, Result,
    model::{decode_checkpoint, encode_checkpoint},
};

/// The commit payload: what the generation has processed, and who wrote it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) checkpoint: String,
    pub(crate) fence: Fence,
    /// The committed length of the generation's journal (lookups and dead letters).
    #[serde(default)]
    pub(crate) journal: u64,
}

pub(crate) fn read_payload(index: &Index) -> Result<Payload> {
    match index.load_metas()?.payload {
        None => Ok(Payload::default()),
        Some(text) => serde_json::from_str(&text).map_err(|_| Error::Corrupt {
            what: format!("tantivy commit payload {text:?}"),
        }),
    }
}

/// Writes batches into one tantivy generation. Holds the index's writer lock: one writer per
/// index, whatever the process.
#[derive(Debug)]
pub struct TantivyWriter {
    core: Arc<Mutex<Core>>,
    schema: tantivy::schema::Schema,
    id_field: tantivy::schema::Field,
    commit_interval: std::time::Duration,
    committed: Option<LogPosition>,
    pending: Option<LogPosition>,
    last_commit: Instant,
    /// A deferred batch still being handed to tantivy on a blocking thread, while the runner
    /// computes the next one. Awaited before anything else touches the writer.
    in_flight: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Drop for TantivyWriter {
    fn drop(&mut self) {
        // A blocking task cannot be cut short; it ends by itself, committing nothing.
        drop(self.in_flight.take());
    }
}

/// The part that runs on a blocking thread.
struct Core {
    inner: Arc<Inner>,
    generation: Generation,
    writer: IndexWriter,
    fence: Fence,
    /// The journal's committed length, and its state with this writer's pending lines.
    journal_len: u64,
    /// While the generation holds only what this writer added (it opened it empty), the ids
    /// it added, hashed: an upsert of an id not among them needs no delete, which is most
    /// of what a rebuild does. A hash collision only costs a needless delete.
    fresh: Option<std::collections::HashSet<u64>>,
    state: journal::State,
    lines: Vec<Vec<u8>>,
}

impl TantivyWriter {
    pub(crate) fn open(inner: Arc<Inner>, generation: Generation, fence: Fence) -> Result<Self> {
        let dir = inner.generation_dir(generation);
        fs::create_dir_all(&dir).map_err(Error::Io)?;
        let directory = MmapDirectory::open(&dir).map_err(|e| Error::Tantivy(e.into()))?;
        let index = Index::open_or_create(directory, inner.schema.clone())?;
        let payload = read_payload(&index)?;
        if payload.fence > fence {
            return Err(Error::Fenced {
                projection: inner.projection.clone(),
                fence,
                stored: payload.fence,
            });
        }
        let budget = inner.config.memory_budget;
        let mut writer: IndexWriter = match inner.config.threads {
            Some(threads) => index.writer_with_num_threads(threads, budget)?,
            None => index.writer(budget)?,
        };
        // Segment files a killed writer left behind, which meta.json does not list.
        writer.garbage_collect_files().wait()?;
        journal::truncate(&dir, payload.journal)?;
        let state = journal::read(&dir, payload.journal)?;
        let empty = payload.checkpoint.is_empty() && index.load_metas()?.segments.is_empty();
        let fresh = empty.then(std::collections::HashSet::new);
        if payload.fence < fence {
            let mut commit = writer.prepare_commit()?;
            let claimed = Payload {
                checkpoint: payload.checkpoint.clone(),
                fence,
                journal: payload.journal,
            };
            commit.set_payload(&serde_json::to_string(&claimed).unwrap_or_default());
            commit.commit()?;
        }
        Ok(Self {
            committed: decode_checkpoint(&payload.checkpoint)?,
            pending: None,
            schema: inner.schema.clone(),
            id_field: inner.id_field,
            commit_interval: inner.config.commit_interval,
            last_commit: Instant::now(),
            in_flight: None,
            core: Arc::new(Mutex::new(Core {
                inner,
                generation,
                writer,
                fence,
                journal_len: payload.journal,
                fresh,
                state,
                lines: Vec::new(),
            })),
        })
    }

    /// Runs `apply` on a blocking thread: adding documents can wait on tantivy's indexing
    /// queue, and a commit waits for segments to be written.
    /// Waits for the deferred batch in flight, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.take() {
            task.await.map_err(|e| Error::WorkerPanicked {
                projection: String::new(),
                message: e.to_string(),
            })??;
        }
        Ok(())
    }

    fn spawn(
        &self,
        ops: Vec<Op>,
        entries: Vec<Entry>,
        commit: Option<LogPosition>,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            core.lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(ops, entries, commit)
        })
    }

    async fn run(
        &mut self,
        ops: Vec<Op>,
        entries: Vec<Entry>,
        commit: Option<LogPosition>,
    ) -> Result<()> {
        self.settle().await?;
        self.spawn(ops, entries, commit)
            .await
            .map_err(|e| Error::WorkerPanicked {
                projection: String::new(),
                message: e.to_string(),
            })??;
        if let Some(checkpoint) = commit {
            self.committed = Some(checkpoint);
            self.pending = None;
            self.last_commit = Instant::now();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("generation", &self.generation)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Applies a batch's changes to the writer, and commits when `commit` says so.
    fn apply(
        &mut self,
        ops: Vec<Op>,
        entries: Vec<Entry>,
        commit: Option<LogPosition>,
    ) -> Result<()> {
        for entry in entries {
            self.journal(entry);
        }
        let id_field = self.inner.id_field;
        for op in ops {
            match op {
                Op::Upsert(id, document) => {
                    if !self.first_time(&id) {
                        self.writer
                            .delete_term(Term::from_field_text(id_field, &id));
                    }
                    self.writer.add_document(document)?;
                }
                Op::Delete(id) => {
                    if self
                        .fresh
                        .as_ref()
                        .is_none_or(|seen| seen.contains(&hash(&id)))
                    {
                        self.writer
                            .delete_term(Term::from_field_text(id_field, &id));
                    }
                }
                Op::Park(letter) => self.journal(Entry::Park(Box::new(letter))),
                Op::Unpark(id) => self.journal(Entry::Unpark(id)),
            }
        }
        let Some(checkpoint) = commit else {
            return Ok(());
        };
        let dir = self.inner.generation_dir(self.generation);
        let journal_len = journal::append(&dir, self.journal_len, &self.lines)?;
        let payload = Payload {
            checkpoint: encode_checkpoint(Some(checkpoint)),
            fence: self.fence,
            journal: journal_len,
        };
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&serde_json::to_string(&payload).unwrap_or_default());
        prepared.commit()?;
        self.journal_len = journal_len;
        self.lines.clear();
        self.inner.reload(self.generation)
    }

    /// Whether `id` surely has no document yet (the generation started empty and this writer
    /// never added it); records it as added.
    fn first_time(&mut self, id: &str) -> bool {
        let Some(seen) = &mut self.fresh else {
            return false;
        };
        if seen.len() >= FRESH_IDS {
            // Too many to remember: every upsert deletes from now on.
            self.fresh = None;
            return false;
        }
        seen.insert(hash(id))
    }

    /// Applies an entry to the state and queues its line for the next commit.
    fn journal(&mut self, entry: Entry) {
        self.lines.push(journal::encode(&entry));
        self.state.apply(entry);
    }
}

/// The most ids a fresh generation's writer remembers (8 bytes each).
const FRESH_IDS: usize = 20_000_000;

fn hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

impl GenerationWriter for TantivyWriter {
    type Batch = TantivyBatch;

    fn checkpoint(&self) -> Option<LogPosition> {
        self.committed
    }

    fn batch(&self) -> TantivyBatch {
        TantivyBatch::new(self.schema.clone(), self.id_field)
    }

    async fn load_lookups(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        self.settle().await?;
        // The journal's state lives in memory beside the writer: no I/O.
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        Ok(keys
            .iter()
            .map(|k| core.state.lookups.get(k).cloned())
            .collect())
    }

    async fn dead_letter_count(&mut self) -> Result<u64> {
        self.settle().await?;
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        Ok(core.state.letters.len() as u64)
    }

    async fn write(
        &mut self,
        batch: TantivyBatch,
        through: LogPosition,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        self.pending = Some(through);
        let due =
            durability == Durability::Now || self.last_commit.elapsed() >= self.commit_interval;
        let commit = due.then_some(through);
        let entries = batch
            .lookups
            .changes()
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Entry::Set(key.to_owned(), value.to_owned()),
                None => Entry::Remove(key.to_owned()),
            })
            .collect();
        if commit.is_none() {
            // Deferred, nothing to commit yet: hand the batch over in the background and let
            // the runner compute the next one meanwhile (a failure shows at the next call).
            self.settle().await?;
            self.in_flight = Some(self.spawn(batch.ops, entries, None));
            return Ok(self.committed);
        }
        self.run(batch.ops, entries, commit).await?;
        Ok(commit)
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        self.settle().await?;
        if let Some(pending) = self.pending {
            self.run(Vec::new(), Vec::new(), Some(pending)).await?;
        }
        Ok(self.committed)
    }
}
