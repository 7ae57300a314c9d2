//! Every `RedisBatch` command through the commit script against a real Redis: the plan
//! encoding (command numbers, key types, argument counts, long counts) and the `TYPE` check
//! that refuses a batch whole.

mod common;

use annals::LogPosition;
use annals_projections::{Durability, Error, GenerationWriter, ReadModel, RedisReadModel};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_lands_as_written() {
    let Some(redis) = redis().await else { return };
    let ns = unique("cmd");
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "all").unwrap();
    let (generation, mut writer) = begin_writing(&model).await;
    let mut batch = writer.batch();
    batch.hset("h", "a", "1");
    batch.hincrby("h", "n", 5);
    batch.hincrby("h", "n", -2);
    batch.hdel("h", "a");
    let many: Vec<(String, i64)> = (0..300).map(|i| (format!("f{i}"), i)).collect();
    batch.hset_multiple("wide", &many);
    batch.zadd("z", "x", 1.5);
    batch.zincrby("z", "x", 2.0);
    batch.zadd("z", "y", 9.0);
    batch.zrem("z", "y");
    batch.push_recent("recent", "a", 2);
    batch.push_recent("recent", "b", 2);
    batch.push_recent("recent", "c", 2);
    batch.rpush("log", "first");
    batch.incrby("count", 7);
    batch.set("text", "hello");
    batch.sadd("s", "m1");
    batch.sadd("s", vec!["m2", "m3"]);
    batch.srem("s", "m1");
    batch.set("gone", "x");
    batch.del("gone");
    // DEL lets the same batch reuse a key as another type.
    batch.del("text");
    batch.rpush("text", "now a list");
    let at = LogPosition::serial(1);
    assert_eq!(
        writer.write(batch, at, Durability::Now).await.unwrap(),
        Some(at)
    );
    model.switch(generation, 1).await.unwrap();
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.hash("h").await.unwrap(), [("n".into(), "3".into())]);
    assert_eq!(view.hash("wide").await.unwrap().len(), 300);
    assert_eq!(
        view.field("wide", "f299").await.unwrap(),
        Some("299".into())
    );
    assert_eq!(view.top("z", 10).await.unwrap(), [("x".into(), 3.5)]);
    assert_eq!(view.list("recent").await.unwrap(), ["c", "b"]);
    assert_eq!(view.list("log").await.unwrap(), ["first"]);
    assert_eq!(view.get("count").await.unwrap(), Some("7".into()));
    assert_eq!(view.members("s").await.unwrap(), ["m2", "m3"]);
    assert_eq!(view.get("gone").await.unwrap(), None);
    assert_eq!(view.list("text").await.unwrap(), ["now a list"]);
    assert_eq!(view.checkpoint().await.unwrap(), Some(at));
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_in_redis_refuses_the_batch_whole() {
    let Some(redis) = redis().await else { return };
    let ns = unique("cmd");
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "typed").unwrap();
    let (generation, mut first) = begin_writing(&model).await;
    let mut batch = first.batch();
    batch.set("k", "text");
    let at = LogPosition::serial(1);
    first.write(batch, at, Durability::Now).await.unwrap();
    drop(first);

    // A new writer knows no key types: the script's TYPE check must catch the mismatch
    // before the first command of the batch runs.
    let mut second = model.open_writer(generation, 1).await.unwrap();
    let mut batch = second.batch();
    batch.incrby("other", 1);
    batch.hincrby("k", "n", 1);
    let err = second
        .write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    model.switch(generation, 1).await.unwrap();
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.get("other").await.unwrap(), None);
    assert_eq!(view.get("k").await.unwrap(), Some("text".into()));
    assert_eq!(view.checkpoint().await.unwrap(), Some(at));
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_forgot_the_script_gets_it_again() {
    let Some(redis) = redis().await else { return };
    let ns = unique("cmd");
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "reload").unwrap();
    let (generation, mut writer) = begin_writing(&model).await;
    // As after a Redis restart: every cached script is gone (others reload theirs the same
    // way).
    let mut c = redis.clone();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut batch = writer.batch();
    batch.incrby("n", 3);
    let at = LogPosition::serial(1);
    assert_eq!(
        writer.write(batch, at, Durability::Now).await.unwrap(),
        Some(at)
    );
    model.switch(generation, 1).await.unwrap();
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.get("n").await.unwrap(), Some("3".into()));
    cleanup_redis(&redis, &ns).await;
}
