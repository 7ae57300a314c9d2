//! The in-process read model: documents in memory, for embedded applications, command-line
//! tools and tests.
//!
//! Each generation is a sorted map from key to a value of your type, with its checkpoint,
//! fence, lookups and dead letters beside it, all behind one lock: a batch is committed with
//! its checkpoint in one step, and readers see a generation before or after a batch, never
//! half of one. Nothing survives the process: a new process builds the model again from the
//! log (a catch-up from position 0, fast for the sizes this is meant for).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    ops::Bound,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
};

use annals::LogPosition;
use uuid::Uuid;

use crate::{
    DeadLetter, Durability, Error, Fence, Generation, GenerationWriter, Generations, Lookups,
    ReadModel, Result, WriteBatch, projection::check_name,
};

/// The in-process read model of one projection: documents of type `V` by key. Cheap to
/// clone (clones share the model); readers use [`MemoryReadModel::view`].
pub struct MemoryReadModel<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for MemoryReadModel<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> fmt::Debug for MemoryReadModel<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReadModel")
            .field("projection", &self.inner.projection)
            .finish_non_exhaustive()
    }
}

struct Inner<V> {
    projection: String,
    meta: Mutex<Meta<V>>,
}

struct Meta<V> {
    current: Option<u64>,
    building: Option<u64>,
    retired: Option<u64>,
    next: u64,
    fence: Fence,
    store: Option<Uuid>,
    generations: HashMap<u64, Arc<Store<V>>>,
}

/// One generation: everything behind one lock.
struct Store<V> {
    data: RwLock<Data<V>>,
}

struct Data<V> {
    docs: BTreeMap<String, V>,
    lookups: HashMap<String, String>,
    letters: BTreeMap<Uuid, DeadLetter>,
    checkpoint: Option<LogPosition>,
    fence: Fence,
}

impl<V> Store<V> {
    fn new() -> Self {
        Self {
            data: RwLock::new(Data {
                docs: BTreeMap::new(),
                lookups: HashMap::new(),
                letters: BTreeMap::new(),
                checkpoint: None,
                fence: 0,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Data<V>> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<V: Clone + Send + Sync + 'static> MemoryReadModel<V> {
    /// An empty read model for `projection`.
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn new(projection: &str) -> Result<Self> {
        check_name(projection)?;
        Ok(Self {
            inner: Arc::new(Inner {
                projection: projection.to_owned(),
                meta: Mutex::new(Meta {
                    current: None,
                    building: None,
                    retired: None,
                    next: 0,
                    fence: 0,
                    store: None,
                    generations: HashMap::new(),
                }),
            }),
        })
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta<V>> {
        self.inner.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fenced(&self, meta: &mut Meta<V>, fence: Fence) -> Result<()> {
        if meta.fence > fence {
            return Err(Error::Fenced {
                projection: self.inner.projection.clone(),
                fence,
                stored: meta.fence,
            });
        }
        meta.fence = fence;
        Ok(())
    }

    /// A view of the generation readers should use now, or `None` before the first build
    /// has completed. A view keeps reading its generation (a consistent state after some
    /// batch) even after a rebuild switched to another; take a new one per request.
    pub fn view(&self) -> Option<MemoryView<V>> {
        let meta = self.meta();
        let generation = meta.current?;
        let store = meta.generations.get(&generation)?.clone();
        Some(MemoryView {
            generation: Generation(generation),
            store,
        })
    }

    /// The generations of this projection.
    pub fn generations(&self) -> Generations {
        let meta = self.meta();
        Generations {
            current: meta.current.map(Generation),
            building: meta.building.map(Generation),
            retired: meta.retired.map(Generation),
            store: meta.store,
        }
    }
}

/// A read-only view of one generation of a [`MemoryReadModel`].
pub struct MemoryView<V> {
    generation: Generation,
    store: Arc<Store<V>>,
}

impl<V> fmt::Debug for MemoryView<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryView")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<V: Clone> MemoryView<V> {
    /// The generation this view reads.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.store.read().docs.get(key).cloned()
    }

    /// Every key starting with `prefix`, with its value, in key order.
    pub fn scan(&self, prefix: &str) -> Vec<(String, V)> {
        let data = self.store.read();
        data.docs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The number of documents.
    pub fn len(&self) -> usize {
        self.store.read().docs.len()
    }

    /// True when the generation holds no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` over all documents at once, under the generation's read lock (one
    /// consistent state; keep it short, writes wait for it).
    pub fn with<T>(&self, f: impl FnOnce(&BTreeMap<String, V>) -> T) -> T {
        f(&self.store.read().docs)
    }

    /// The generation's committed checkpoint.
    pub fn checkpoint(&self) -> Option<LogPosition> {
        self.store.read().checkpoint
    }

    /// The generation's dead letters, in log order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut letters: Vec<DeadLetter> = self.store.read().letters.values().cloned().collect();
        letters.sort_by_key(|l| l.position);
        letters
    }
}

/// The writes a handler adds to an in-process generation: puts, updates and deletes by
/// key, read back through [`MemoryBatch::get`] (the committed value overlaid with the
/// batch's own writes).
pub struct MemoryBatch<V> {
    store: Arc<Store<V>>,
    /// Pending values (`None`: deleted).
    overlay: HashMap<String, Option<V>>,
    /// Every write, in order, with what the overlay held before (for rollback).
    journal: Vec<(String, Option<Option<V>>)>,
    letters: Vec<Letter>,
    lookups: Lookups,
}

enum Letter {
    Park(DeadLetter),
    Unpark(Uuid),
}

impl<V> fmt::Debug for MemoryBatch<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBatch")
            .field("writes", &self.journal.len())
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> MemoryBatch<V> {
    /// The value of `key` as this batch sees it: its own writes first, then the committed
    /// generation.
    pub fn get(&self, key: &str) -> Option<V> {
        match self.overlay.get(key) {
            Some(value) => value.clone(),
            None => self.store.read().docs.get(key).cloned(),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<String>, value: V) {
        self.write(key.into(), Some(value));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl Into<String>) {
        self.write(key.into(), None);
    }

    /// Changes the value of `key` in place (starting from `V::default()` when absent).
    pub fn update(&mut self, key: impl Into<String>, f: impl FnOnce(&mut V))
    where
        V: Default,
    {
        let key = key.into();
        let mut value = self.get(&key).unwrap_or_default();
        f(&mut value);
        self.write(key, Some(value));
    }

    /// The number of writes added.
    pub fn len(&self) -> usize {
        self.journal.len()
    }

    /// True when no write was added.
    pub fn is_empty(&self) -> bool {
        self.journal.is_empty() && self.letters.is_empty()
    }

    fn write(&mut self, key: String, value: Option<V>) {
        let before = self.overlay.insert(key.clone(), value);
        self.journal.push((key, before));
    }
}

impl<V: Clone + Send + Sync + 'static> WriteBatch for MemoryBatch<V> {
    fn savepoint(&self) -> usize {
        // Two counters in one mark: writes in the low 48 bits, letters above.
        self.journal.len() | (self.letters.len() << 48)
    }

    fn rollback_to(&mut self, savepoint: usize) {
        let writes = savepoint & ((1 << 48) - 1);
        let letters = savepoint >> 48;
        self.letters.truncate(letters);
        while self.journal.len() > writes {
            let Some((key, before)) = self.journal.pop() else {
                break;
            };
            match before {
                Some(value) => {
                    self.overlay.insert(key, value);
                }
                None => {
                    self.overlay.remove(&key);
                }
            }
        }
    }

    fn park(&mut self, letter: DeadLetter) {
        self.letters.push(Letter::Park(letter));
    }

    fn unpark(&mut self, event_id: Uuid) {
        self.letters.push(Letter::Unpark(event_id));
    }

    fn is_empty(&self) -> bool {
        MemoryBatch::is_empty(self) && self.lookups.is_unchanged()
    }

    fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    fn lookups_mut(&mut self) -> &mut Lookups {
        &mut self.lookups
    }
}

/// The writer of one in-process generation.
pub struct MemoryWriter<V> {
    projection: String,
    store: Arc<Store<V>>,
    fence: Fence,
    checkpoint: Option<LogPosition>,
}

impl<V> fmt::Debug for MemoryWriter<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWriter")
            .field("projection", &self.projection)
            .field("fence", &self.fence)
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> GenerationWriter for MemoryWriter<V> {
    type Batch = MemoryBatch<V>;

    fn checkpoint(&self) -> Option<LogPosition> {
        self.checkpoint
    }

    fn batch(&self) -> MemoryBatch<V> {
        MemoryBatch {
            store: self.store.clone(),
            overlay: HashMap::new(),
            journal: Vec::new(),
            letters: Vec::new(),
            lookups: Lookups::new(),
        }
    }

    async fn load_lookups(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        let data = self.store.read();
        Ok(keys.iter().map(|k| data.lookups.get(k).cloned()).collect())
    }

    async fn dead_letter_count(&mut self) -> Result<u64> {
        Ok(self.store.read().letters.len() as u64)
    }

    async fn write(
        &mut self,
        batch: MemoryBatch<V>,
        through: LogPosition,
        _durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let mut data = self.store.data.write().unwrap_or_else(|e| e.into_inner());
        if data.fence > self.fence {
            return Err(Error::Fenced {
                projection: self.projection.clone(),
                fence: self.fence,
                stored: data.fence,
            });
        }
        if data.checkpoint != self.checkpoint {
            return Err(Error::CheckpointMoved {
                projection: self.projection.clone(),
                expected: self.checkpoint,
                stored: data.checkpoint,
            });
        }
        for (key, value) in batch.lookups.changes() {
            match value {
                Some(value) => {
                    data.lookups.insert(key.to_owned(), value.to_owned());
                }
                None => {
                    data.lookups.remove(key);
                }
            }
        }
        for (key, value) in batch.overlay {
            match value {
                Some(value) => {
                    data.docs.insert(key, value);
                }
                None => {
                    data.docs.remove(&key);
                }
            }
        }
        for letter in batch.letters {
            match letter {
                Letter::Park(letter) => {
                    data.letters.insert(letter.event_id, letter);
                }
                Letter::Unpark(id) => {
                    data.letters.remove(&id);
                }
            }
        }
        data.checkpoint = Some(through);
        data.fence = self.fence;
        self.checkpoint = Some(through);
        Ok(self.checkpoint)
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        Ok(self.checkpoint)
    }
}

impl<V: Clone + Send + Sync + 'static> ReadModel for MemoryReadModel<V> {
    type Batch = MemoryBatch<V>;
    type Writer = MemoryWriter<V>;

    fn projection(&self) -> &str {
        &self.inner.projection
    }

    async fn claim(&self, fence: Fence, store: Uuid) -> Result<Generations> {
        let mut meta = self.meta();
        self.fenced(&mut meta, fence)?;
        let before = Generations {
            current: meta.current.map(Generation),
            building: meta.building.map(Generation),
            retired: meta.retired.map(Generation),
            store: meta.store,
        };
        meta.store.get_or_insert(store);
        Ok(before)
    }

    async fn reset(&self, fence: Fence, store: Uuid) -> Result<()> {
        let mut meta = self.meta();
        self.fenced(&mut meta, fence)?;
        meta.current = None;
        meta.building = None;
        meta.retired = None;
        meta.store = Some(store);
        meta.generations.clear();
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self.view().map(|v| v.dead_letters()).unwrap_or_default())
    }

    async fn peek_generations(&self) -> Result<Generations> {
        Ok(self.generations())
    }

    async fn peek_checkpoint(&self, generation: Generation) -> Result<Option<LogPosition>> {
        let store = self.meta().generations.get(&generation.0).cloned();
        Ok(store.and_then(|s| s.read().checkpoint))
    }

    async fn begin_build(&self, fence: Fence) -> Result<Generation> {
        let mut meta = self.meta();
        self.fenced(&mut meta, fence)?;
        if let Some(b) = meta.building {
            return Ok(Generation(b));
        }
        let n = (meta.next + 1).max(meta.current.unwrap_or(0).max(meta.retired.unwrap_or(0)) + 1);
        meta.next = n;
        meta.building = Some(n);
        meta.generations.insert(n, Arc::new(Store::new()));
        Ok(Generation(n))
    }

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<MemoryWriter<V>> {
        let store = {
            let mut meta = self.meta();
            meta.generations
                .entry(generation.0)
                .or_insert_with(|| Arc::new(Store::new()))
                .clone()
        };
        let checkpoint = {
            let mut data = store.data.write().unwrap_or_else(|e| e.into_inner());
            if data.fence > fence {
                return Err(Error::Fenced {
                    projection: self.inner.projection.clone(),
                    fence,
                    stored: data.fence,
                });
            }
            data.fence = fence;
            data.checkpoint
        };
        Ok(MemoryWriter {
            projection: self.inner.projection.clone(),
            store,
            fence,
            checkpoint,
        })
    }

    async fn switch(&self, generation: Generation, fence: Fence) -> Result<Option<Generation>> {
        let mut meta = self.meta();
        self.fenced(&mut meta, fence)?;
        let old = meta.current.filter(|&c| c != generation.0);
        meta.current = Some(generation.0);
        if meta.building == Some(generation.0) {
            meta.building = None;
        }
        if old.is_some() {
            meta.retired = old;
        }
        Ok(old.map(Generation))
    }

    async fn drop_generation(&self, generation: Generation) -> Result<()> {
        let mut meta = self.meta();
        meta.generations.remove(&generation.0);
        if meta.retired == Some(generation.0) {
            meta.retired = None;
        }
        Ok(())
    }
}
