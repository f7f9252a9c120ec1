//! Tracing output (S26): a span per unwind, a child span per entry naming
//! the resource with its outcome and duration, and events at the levels an
//! operator expects.

mod common;

use std::time::Duration;

use common::Capture;
use tokio_exit_stack::{AsyncExitStack, BoxError, Flow};
use tracing::Level;

#[tokio::test(flavor = "current_thread")]
async fn s26_every_unwind_is_a_span_with_a_child_span_per_entry() {
    let capture = Capture::default();
    let _guard = capture.install();
    let mut stack = AsyncExitStack::new();
    let site = stack.site().to_string();
    stack.entry().label("audit flush").push_async_callback(|| async {});
    stack
        .entry()
        .label("upload receipts")
        .callback(|| Err::<(), _>(std::io::Error::other("bucket unreachable")));
    stack.push_exit(|_| Ok::<_, BoxError>(Flow::Suppress));
    let _ = stack.aclose().await;

    let spans = capture.spans();
    let unwind = spans.iter().find(|s| s.name == "unwind").expect("an unwind span");
    assert_eq!(unwind.field("site"), Some(site.as_str()));
    assert_eq!(unwind.field("entries"), Some("3"));
    assert_eq!(unwind.field("reason"), Some("aclose"));

    let exits: Vec<_> = spans.iter().filter(|s| s.name == "exit").collect();
    assert_eq!(exits.len(), 3);
    assert!(exits.iter().all(|s| s.parent.as_deref() == Some("unwind")));
    assert!(
        exits[0].field("resource").unwrap().contains("closure"),
        "a type name when unlabelled"
    );
    assert_eq!(exits[0].field("outcome"), Some("suppressed"));
    assert_eq!(exits[1].field("resource"), Some("upload receipts"));
    assert_eq!(exits[1].field("outcome"), Some("error"));
    assert_eq!(exits[2].field("resource"), Some("audit flush"));
    assert_eq!(exits[2].field("outcome"), Some("ok"));
    assert!(
        exits.iter().all(|s| s.field("elapsed_us").is_some()),
        "each records its duration"
    );

    let warn = capture
        .events()
        .into_iter()
        .find(|e| e.level == Level::WARN)
        .expect("a WARN event for the failed cleanup");
    assert_eq!(warn.message, "cleanup failed");
    assert_eq!(warn.field("resource"), Some("upload receipts"));
    assert_eq!(warn.field("error"), Some("bucket unreachable"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s26_timeouts_are_warn_events_and_dropped_stacks_unwind_with_reason_drop() {
    let capture = Capture::default();
    let _guard = capture.install();
    let mut stack = AsyncExitStack::new();
    stack
        .entry()
        .label("hung close")
        .timeout(Duration::from_millis(5))
        .push_async_callback(std::future::pending::<()>);
    let _ = stack.aclose().await;
    let timeout = capture
        .events()
        .into_iter()
        .find(|e| e.level == Level::WARN && e.message.contains("timed out"))
        .expect("a WARN event for the timeout");
    assert_eq!(timeout.field("resource"), Some("hung close"));

    let (tx, rx) = tokio::sync::oneshot::channel();
    let stack = AsyncExitStack::new();
    stack.push_async_callback(move || async move {
        let _ = tx.send(());
    });
    drop(stack);
    rx.await.unwrap();
    tokio::task::yield_now().await;
    let spans = capture.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "unwind" && s.field("reason") == Some("drop"))
    );
}
