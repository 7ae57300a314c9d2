//! The read-model conformance suite (`annals_projections::testing`) for every target of this
//! crate: in process, Redis, tantivy.

mod common;

use std::collections::BTreeMap;

use annals_projections::{
    MemoryBatch, MemoryReadModel, RedisBatch, RedisReadModel, TantivyBatch, TantivyConfig,
    TantivyReadModel, testing::Target,
};
use tantivy::{
    TantivyDocument,
    query::AllQuery,
    schema::{Field, STORED, STRING, Schema, Value},
};

/// The in-process model: documents are the values themselves.
struct Memory;

impl Target for Memory {
    type Model = MemoryReadModel<String>;

    async fn model(&self, name: &str) -> Self::Model {
        MemoryReadModel::new(name).unwrap()
    }

    fn put(&self, batch: &mut MemoryBatch<String>, key: &str, value: &str) {
        batch.put(key, value.to_owned());
    }

    async fn dump(&self, model: &Self::Model) -> Option<BTreeMap<String, String>> {
        model.view().map(|v| v.with(|docs| docs.clone()))
    }
}

async fn memory() -> Option<Memory> {
    Some(Memory)
}

mod memory {
    annals_projections::read_model_conformance_tests!(super::memory());
}

/// Redis: one hash `docs` per generation, field = key.
struct Redis {
    connection: annals_projections::RedisConnection,
    namespace: String,
}

impl Target for Redis {
    type Model = RedisReadModel;

    async fn model(&self, name: &str) -> Self::Model {
        RedisReadModel::with_namespace(self.connection.clone(), &self.namespace, name).unwrap()
    }

    fn put(&self, batch: &mut RedisBatch, key: &str, value: &str) {
        batch.hset("docs", key, value);
    }

    async fn dump(&self, model: &Self::Model) -> Option<BTreeMap<String, String>> {
        let view = model.view().await.unwrap()?;
        Some(view.hash("docs").await.unwrap().into_iter().collect())
    }
}

/// Deletes the namespace's keys when a check ends, however it ends: the suite has no teardown
/// of its own, and a test run leaves nothing behind in the Redis it used. (The checks run on
/// a multi-threaded runtime, whose other workers drive the connection meanwhile.)
impl Drop for Redis {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            runtime.block_on(common::cleanup_redis(&self.connection, &self.namespace));
        });
    }
}

async fn redis() -> Option<Redis> {
    Some(Redis {
        connection: common::redis().await?,
        namespace: common::unique("conf"),
    })
}

mod redis {
    annals_projections::read_model_conformance_tests!(super::redis());
}

/// tantivy: one document per key, the value stored.
struct Tantivy {
    dir: tempfile::TempDir,
    id: Field,
    value: Field,
    schema: Schema,
}

impl Target for Tantivy {
    type Model = TantivyReadModel;

    async fn model(&self, name: &str) -> Self::Model {
        TantivyReadModel::open(
            self.dir.path(),
            name,
            self.schema.clone(),
            self.id,
            TantivyConfig::new().with_memory_budget(15_000_000),
        )
        .unwrap()
    }

    fn put(&self, batch: &mut TantivyBatch, key: &str, value: &str) {
        let mut doc = TantivyDocument::new();
        doc.add_text(self.value, value);
        batch.upsert(key, doc);
    }

    async fn dump(&self, model: &Self::Model) -> Option<BTreeMap<String, String>> {
        let view = model.view().unwrap()?;
        let (id, value) = (self.id, self.value);
        let hits = view.search(&AllQuery, 1_000_000).unwrap();
        let count = hits.len();
        let docs: BTreeMap<String, String> = hits
            .into_iter()
            .map(|hit| {
                let doc = hit.document;
                let text = |f| {
                    doc.get_first(f)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                (text(id), text(value))
            })
            .collect();
        // An upsert replaces: one document per id, never two.
        assert_eq!(docs.len(), count, "duplicate documents for one id");
        Some(docs)
    }
}

async fn tantivy() -> Option<Tantivy> {
    let mut schema = Schema::builder();
    let id = schema.add_text_field("id", STRING | STORED);
    let value = schema.add_text_field("value", STRING | STORED);
    Some(Tantivy {
        dir: tempfile::tempdir().unwrap(),
        id,
        value,
        schema: schema.build(),
    })
}

mod tantivy_target {
    annals_projections::read_model_conformance_tests!(super::tantivy());
}
