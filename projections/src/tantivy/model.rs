//! A projection's tantivy index: one directory per generation, a state file naming the
//! current one.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tantivy::{
    Index, IndexReader, ReloadPolicy,
    directory::MmapDirectory,
    schema::{Field, FieldType, Schema},
};

use super::{TantivyConfig, TantivyWriter};
use crate::{Error, Fence, Generation, Generations, ReadModel, Result, projection::check_name};

/// The state file: which generation serves, which is built, the fence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    current: Option<u64>,
    building: Option<u64>,
    retired: Option<u64>,
    next: u64,
    fence: Fence,
    /// The event store the read model is built from.
    #[serde(default)]
    store: Option<uuid::Uuid>,
}

/// The tantivy read model of one projection, under `<root>/<projection>/`: `state.json`
/// (replaced by rename, so readers see the old or the new pointer, never a torn one) and one
/// index directory per generation, `gen-<n>`, each with its checkpoint and fence in the last
/// commit's payload. Cheap to clone; readers use [`TantivyReadModel::view`].
#[derive(Debug, Clone)]
pub struct TantivyReadModel {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) projection: String,
    pub(crate) schema: Schema,
    pub(crate) id_field: Field,
    pub(crate) config: TantivyConfig,
    state_lock: Mutex<()>,
    pub(crate) reader: Mutex<Option<(Generation, Index, IndexReader)>>,
}

impl TantivyReadModel {
    /// The read model of `projection` under `root`, with `schema`, where `id_field` (a
    /// `STRING` field, indexed untokenized) identifies documents for upserts.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Schema`] for an unusable id field, [`Error::Io`]
    /// when the directory cannot be created.
    pub fn open(
        root: impl AsRef<Path>,
        projection: &str,
        schema: Schema,
        id_field: Field,
        config: TantivyConfig,
    ) -> Result<Self> {
        check_name(projection)?;
        let entry = schema.get_field_entry(id_field);
        let usable =
            matches!(entry.field_type(), FieldType::Str(o) if o.get_indexing_options().is_some());
        if !usable {
            return Err(Error::Schema {
                reason: format!(
                    "the id field {} must be an indexed text field (STRING)",
                    entry.name()
                ),
            });
        }
        let dir = root.as_ref().join(projection);
        fs::create_dir_all(&dir).map_err(Error::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                projection: projection.to_owned(),
                schema,
                id_field,
                config,
                state_lock: Mutex::new(()),
                reader: Mutex::new(None),
            }),
        })
    }

    /// The index schema.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The generations of this projection, from the state file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Corrupt`].
    pub fn generations(&self) -> Result<Generations> {
        let state = self.inner.read_state()?;
        Ok(generations(&state))
    }

    fn update<T>(&self, fence: Option<Fence>, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let _lock = self
            .inner
            .state_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut state = self.inner.read_state()?;
        if let Some(fence) = fence {
            if state.fence > fence {
                return Err(Error::Fenced {
                    projection: self.inner.projection.clone(),
                    fence,
                    stored: state.fence,
                });
            }
            state.fence = fence;
        }
        let out = f(&mut state);
        self.inner.write_state(&state)?;
        Ok(out)
    }
}

fn generations(state: &State) -> Generations {
    Generations {
        current: state.current.map(Generation),
        building: state.building.map(Generation),
        retired: state.retired.map(Generation),
        store: state.store,
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("dir", &self.dir)
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(crate) fn generation_dir(&self, generation: Generation) -> PathBuf {
        self.dir.join(format!("gen-{}", generation.0))
    }

    fn read_state(&self) -> Result<State> {
        match fs::read(self.dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| Error::Corrupt {
                what: format!("{}/state.json", self.dir.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn write_state(&self, state: &State) -> Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        let json = serde_json::to_vec(state).map_err(|_| Error::Corrupt {
            what: "state".to_owned(),
        })?;
        let mut file = fs::File::create(&tmp).map_err(Error::Io)?;
        file.write_all(&json).map_err(Error::Io)?;
        file.sync_all().map_err(Error::Io)?;
        fs::rename(&tmp, self.dir.join("state.json")).map_err(Error::Io)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::Io)
    }

    /// The current generation's index and reader, opened once and reused until the
    /// generation changes.
    pub(crate) fn current_reader(&self) -> Result<Option<(Generation, Index, IndexReader)>> {
        let Some(current) = self.read_state()?.current.map(Generation) else {
            return Ok(None);
        };
        let mut cache = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = cache.as_ref().filter(|(g, ..)| *g == current) {
            return Ok(Some(cached.clone()));
        }
        let directory = MmapDirectory::open(self.generation_dir(current))
            .map_err(|e| Error::Tantivy(e.into()))?;
        let index = Index::open(directory)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()?;
        *cache = Some((current, index.clone(), reader.clone()));
        Ok(Some((current, index, reader)))
    }

    /// Makes readers of `generation` in this process see its latest commit.
    pub(crate) fn reload(&self, generation: Generation) -> Result<()> {
        let cache = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, _, reader)) = cache.as_ref()
            && *g == generation
        {
            reader.reload()?;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::WorkerPanicked {
            projection: String::new(),
            message: e.to_string(),
        })?
}

impl ReadModel for TantivyReadModel {
    type Batch = super::TantivyBatch;
    type Writer = TantivyWriter;

    fn projection(&self) -> &str {
        &self.inner.projection
    }

    async fn claim(&self, fence: Fence, store: uuid::Uuid) -> Result<Generations> {
        let this = self.clone();
        blocking(move || {
            this.update(Some(fence), |s| {
                let before = generations(s);
                s.store.get_or_insert(store);
                before
            })
        })
        .await
    }

    async fn reset(&self, fence: Fence, store: uuid::Uuid) -> Result<()> {
        let this = self.clone();
        let dropped = blocking(move || {
            this.update(Some(fence), |s| {
                let dropped = [s.current, s.building, s.retired];
                s.current = None;
                s.building = None;
                s.retired = None;
                s.store = Some(store);
                dropped
            })
        })
        .await?;
        for generation in dropped.into_iter().flatten() {
            let dir = self.inner.generation_dir(Generation(generation));
            blocking(move || match fs::remove_dir_all(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Io(e)),
            })
            .await?;
        }
        Ok(())
    }

    async fn peek_generations(&self) -> Result<Generations> {
        let this = self.clone();
        blocking(move || this.generations()).await
    }

    async fn peek_checkpoint(&self, generation: Generation) -> Result<Option<annals::LogPosition>> {
        let dir = self.inner.generation_dir(generation);
        blocking(move || {
            if !dir.join("meta.json").exists() {
                return Ok(None);
            }
            let directory = MmapDirectory::open(&dir).map_err(|e| Error::Tantivy(e.into()))?;
            let index = Index::open(directory)?;
            crate::model::decode_checkpoint(&super::writer::read_payload(&index)?.checkpoint)
        })
        .await
    }

    async fn dead_letters(&self) -> Result<Vec<crate::DeadLetter>> {
        let this = self.clone();
        blocking(move || match this.view()? {
            Some(view) => view.dead_letters(),
            None => Ok(Vec::new()),
        })
        .await
    }

    async fn begin_build(&self, fence: Fence) -> Result<Generation> {
        let this = self.clone();
        blocking(move || {
            this.update(Some(fence), |s| {
                if let Some(b) = s.building {
                    return Generation(b);
                }
                let n = (s.next + 1).max(s.current.unwrap_or(0).max(s.retired.unwrap_or(0)) + 1);
                s.next = n;
                s.building = Some(n);
                Generation(n)
            })
        })
        .await
    }

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<TantivyWriter> {
        let inner = self.inner.clone();
        blocking(move || TantivyWriter::open(inner, generation, fence)).await
    }

    async fn switch(&self, generation: Generation, fence: Fence) -> Result<Option<Generation>> {
        let this = self.clone();
        blocking(move || {
            this.update(Some(fence), |s| {
                let old = s.current.filter(|&c| c != generation.0);
                s.current = Some(generation.0);
                if s.building == Some(generation.0) {
                    s.building = None;
                }
                if old.is_some() {
                    s.retired = old;
                }
                old.map(Generation)
            })
        })
        .await
    }

    async fn drop_generation(&self, generation: Generation) -> Result<()> {
        let this = self.clone();
        blocking(move || {
            match fs::remove_dir_all(this.inner.generation_dir(generation)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io(e)),
            }
            this.update(None, |s| {
                if s.retired == Some(generation.0) {
                    s.retired = None;
                }
            })
        })
        .await
    }
}
