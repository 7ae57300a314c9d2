//! A projection on a real 3-node Redis Cluster: every key of a generation in one slot, so
//! the Lua batch is valid; rebuilds switch generations across slots.

mod common;

use std::time::Duration;

use annals::{EventStore, InMemoryEventStore};
use annals_projections::{
    ProjectionConfig, ProjectionRunner, RedisConnection, RedisReadModel, RunnerConfig,
};
use common::*;

async fn cluster() -> Option<RedisConnection> {
    let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "REDIS_CLUSTER_URLS is not set; run `source scripts/services.sh; ensure_redis_cluster`"
        );
        eprintln!("notice: REDIS_CLUSTER_URLS not set, skipping the cluster test");
        return None;
    };
    let nodes: Vec<String> = urls.split(',').map(str::to_owned).collect();
    match tokio::time::timeout(Duration::from_secs(10), RedisConnection::cluster(nodes)).await {
        Ok(Ok(c)) => Some(c),
        other => panic!("the Redis Cluster at {urls} is unreachable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_and_rebuild_on_a_redis_cluster() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let ns = unique("t");
    let store = InMemoryEventStore::new();
    seed(&store, 0, 1000).await;
    let model = RedisReadModel::with_namespace(cluster.clone(), &ns, "balances").unwrap();
    let runner = ProjectionRunner::new(store.clone())
        .with_config(RunnerConfig::new().with_retire_grace(Duration::from_millis(10)));
    runner
        .add(
            Balances::new("balances"),
            model.clone(),
            ProjectionConfig::new().with_batch_size(100),
        )
        .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;
    let before = dump_redis(&model).await;

    let report = runner.rebuild("balances").await.unwrap();
    assert_eq!(report.generation.0, 2);
    assert_eq!(dump_redis(&model).await, before);
    let head = seed(&store, 1000, 50).await;
    runner.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;

    // Every key of the serving generation hashes to one slot.
    let view = model.view().await.unwrap().unwrap();
    let keys = model.keys(&view).await.unwrap();
    assert!(keys.len() > 40, "{} keys", keys.len());
    let mut c = cluster.clone();
    let mut slots = std::collections::BTreeSet::new();
    for key in keys.iter().map(|k| view.key(k)).chain([view.key("__meta")]) {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 1, "{slots:?}");
    runner.shutdown().await;

    // Clean up: the generation and the projection's metadata.
    for key in keys
        .iter()
        .map(|k| view.key(k))
        .chain([view.key("__meta"), format!("{{{ns}:balances}}:meta")])
    {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}
