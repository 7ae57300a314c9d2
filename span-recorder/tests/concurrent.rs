//! Spans opened and recorded on many threads at once: the recorder takes one lock at a time,
//! so it never deadlocks (it did once: a field recorded on one thread while a span opened on
//! another, each holding the lock the other wanted).

use std::{sync::mpsc, thread, time::Duration};

use annals_span_recorder::recorder;

#[test]
fn spans_opened_and_recorded_on_many_threads_never_deadlock() {
    let (done, finished) = mpsc::channel();
    for t in 0..4 {
        let done = done.clone();
        thread::spawn(move || {
            let (recorder, _recording) = recorder();
            for i in 0..5_000u32 {
                let span = tracing::info_span!("work", n = i, done = tracing::field::Empty);
                span.record("done", true);
            }
            let seen = recorder.named("work");
            let _ = done.send((
                t,
                seen.len(),
                seen.iter().all(|s| s.field("done") == "true"),
            ));
        });
    }
    drop(done);
    for _ in 0..4 {
        let (t, spans, recorded) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("a recording thread is stuck: the recorder deadlocked");
        assert_eq!(
            spans, 5_000,
            "thread {t} saw only its own spans, all of them"
        );
        assert!(
            recorded,
            "thread {t}: a field recorded after opening is missing"
        );
    }
}
