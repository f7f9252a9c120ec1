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
    common::drop_forgotten(stack);
    rx.await.unwrap();
    tokio::task::yield_now().await;
    let spans = capture.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "unwind" && s.field("reason") == Some("drop"))
    );
}

/// A subscriber of one test: every event with the names of the spans it
/// happened in, innermost first, and the thread it happened on.
#[derive(Clone, Default)]
struct Scoped(std::sync::Arc<std::sync::Mutex<Vec<Seen>>>);

/// An event's message, its spans (innermost first), its thread's name.
type Seen = (String, Vec<String>, Option<String>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Scoped
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        let thread = std::thread::current().name().map(str::to_owned);
        self.0.lock().unwrap().push((message.0, spans, thread));
    }
}

/// The background cleanup of a cancelled request runs under the
/// dispatcher current where its stack was dropped (here a scoped one, set
/// only on the test's thread) and inside the request's span, though it
/// runs on a worker thread of a 2-worker runtime.
#[test]
fn s20_background_cleanup_reaches_a_scoped_subscriber_inside_its_requests_span() {
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let events = Scoped::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bg-worker")
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let request = async {
                let stack = common::cancellable();
                stack.push_async_callback(|| async {
                    tokio::task::yield_now().await;
                    tracing::info!("released the request's connection");
                });
                drop(stack); // cleanup goes to the background
            };
            request.instrument(tracing::info_span!("request", id = 7)).await;
            tokio_exit_stack::drain(Duration::from_secs(30)).await;
        })
    });
    let events = events.0.lock().unwrap().clone();
    let released = events
        .iter()
        .find(|(message, ..)| message == "released the request's connection")
        .unwrap_or_else(|| panic!("the scoped subscriber saw the cleanup's event: {events:?}"));
    assert!(released.1.contains(&"unwind".to_owned()), "{released:?}");
    assert!(
        released.1.contains(&"request".to_owned()),
        "in the request's span: {released:?}"
    );
    assert_eq!(released.2.as_deref(), Some("bg-worker"), "ran on a worker thread");
}

/// A sqlx transaction's outcome is a DEBUG event in its exit's span.
/// (Here, where every test installs the capturing subscriber first, so no
/// other test's unwind races the subscriber's installation.)
#[cfg(feature = "sqlx")]
#[tokio::test(flavor = "current_thread")]
async fn a_transactions_outcome_is_an_event_in_its_exits_span() {
    let capture = Capture::default();
    let _guard = capture.install();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    for fail in [false, true] {
        let _ = tokio_exit_stack::scope(async |stack| {
            stack.enter_async_context(tokio_exit_stack::sqlx::begin(&pool)).await?;
            if fail {
                Err(std::io::Error::other("request failed"))?;
            }
            Ok(())
        })
        .await;
    }
    let outcomes: Vec<(String, Option<String>, Level)> = capture
        .events()
        .into_iter()
        .filter_map(|e| Some((e.field("transaction")?.to_owned(), e.span.clone(), e.level)))
        .collect();
    let exit = Some("exit".to_owned());
    assert_eq!(
        outcomes,
        [
            ("committed".to_owned(), exit.clone(), Level::DEBUG),
            ("rolled back".to_owned(), exit, Level::DEBUG),
        ]
    );
}

/// A stack made outside any span belongs to no span: dropped inside one
/// (its sync cleanup then runs right there, inline), its unwind is a root
/// span, not a child of whatever span was current at the drop.
#[tokio::test(flavor = "current_thread")]
async fn s20_a_stack_made_outside_any_span_unwinds_in_a_root_span_wherever_it_is_dropped() {
    use tracing::Instrument as _;

    let capture = Capture::default();
    let _guard = capture.install();
    let stack = common::cancellable();
    stack.callback(|| ());
    async { drop(stack) }.instrument(tracing::info_span!("elsewhere")).await;
    tokio_exit_stack::drain(Duration::from_secs(5)).await;
    let unwind = capture
        .spans()
        .into_iter()
        .find(|s| s.name == "unwind")
        .expect("the drop made an unwind span");
    assert_eq!(unwind.parent, None, "{unwind:?}");
}
