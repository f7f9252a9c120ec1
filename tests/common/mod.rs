//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

#[cfg(feature = "rustls")]
pub mod tls;

#[cfg(all(unix, feature = "sqlx"))]
pub mod postgres;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Runs one async test body on both runtime flavours (S25): generates a
/// module with a `current_thread` and a `multi_thread` test.
#[macro_export]
macro_rules! both_flavours {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$meta])*
            #[tokio::test(flavor = "current_thread")]
            async fn current_thread() $body
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() $body
        }
    };
}

/// An ordered record of what ran, shared with the entries.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A tracing event as a test sees it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub target: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
    /// The name of the span the event was emitted in, if any.
    pub span: Option<String>,
}

impl Captured {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Captures the tracing events emitted on the current thread while its
/// guard lives.
///
/// One global subscriber serves the whole test binary, routing each event
/// to the capture installed on the emitting thread. (A per-thread
/// `set_default` would race with tests on other threads over tracing's
/// callsite-interest cache.)
/// A span as a test sees it: name, parent's name, every field recorded.
#[derive(Debug, Clone)]
pub struct CapturedSpan {
    pub name: String,
    pub parent: Option<String>,
    pub fields: Vec<(String, String)>,
}

impl CapturedSpan {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<Captured>>>, Arc<Mutex<Vec<CapturedSpan>>>);

thread_local! {
    static ACTIVE: std::cell::RefCell<Option<Capture>> = const { std::cell::RefCell::new(None) };
}

pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.borrow_mut().take());
    }
}

impl Capture {
    pub fn events(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }
    /// The events captured at `level`.
    pub fn at(&self, level: Level) -> Vec<Captured> {
        self.events().into_iter().filter(|e| e.level == level).collect()
    }
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.1.lock().unwrap().clone()
    }
    /// Captures this thread's events until the guard drops.
    pub fn install(&self) -> CaptureGuard {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(Router);
            tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        });
        // tracing caches each callsite's interest the first time it is hit.
        // A callsite first hit on another test's thread while the global
        // subscriber was being set can cache "never" for good (the dispatch
        // is registered before it is installed: tokio-rs/tracing#2874,
        // #3611), and this test would then capture nothing from it. Asking
        // every known callsite again makes that cache right before each
        // capture.
        tracing::callsite::rebuild_interest_cache();
        ACTIVE.with(|a| *a.borrow_mut() = Some(self.clone()));
        CaptureGuard
    }
}

struct Router;

struct Visitor<'a>(&'a mut Captured);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = v;
        } else {
            self.0.fields.push((field.name().to_owned(), v));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.message = value.to_owned();
        } else {
            self.0.fields.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

/// Where a span's record lives in its capture.
struct SpanSlot(Capture, usize);

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Router {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let Some(capture) = ACTIVE.with(|a| a.borrow().clone()) else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        let mut c = Captured {
            level: *attrs.metadata().level(),
            target: String::new(),
            message: String::new(),
            fields: Vec::new(),
            span: None,
        };
        attrs.record(&mut Visitor(&mut c));
        let record = CapturedSpan {
            name: attrs.metadata().name().to_owned(),
            parent: span.parent().map(|p| p.name().to_owned()),
            fields: c.fields,
        };
        let index = {
            let mut spans = capture.1.lock().unwrap();
            spans.push(record);
            spans.len() - 1
        };
        span.extensions_mut().insert(SpanSlot(capture, index));
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        let Some(SpanSlot(capture, index)) = ext.get::<SpanSlot>() else {
            return;
        };
        let mut c = Captured {
            level: Level::TRACE,
            target: String::new(),
            message: String::new(),
            fields: Vec::new(),
            span: None,
        };
        values.record(&mut Visitor(&mut c));
        capture.1.lock().unwrap()[*index].fields.extend(c.fields);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(capture) = ACTIVE.with(|a| a.borrow().clone()) else {
            return;
        };
        let mut c = Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: String::new(),
            fields: Vec::new(),
            span: None,
        };
        event.record(&mut Visitor(&mut c));
        c.span = ctx.event_span(event).map(|span| span.name().to_owned());
        capture.0.lock().unwrap().push(c);
    }
}

/// Waits until `done()` holds, checking every millisecond; fails the test
/// (instead of hanging it) if it still does not after 30 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// How many loopback connections a test may open when it wants `want`:
/// raises this process's soft open-file limit toward the hard limit (the
/// default soft limit, 1024, is too low for a thousand connections, each
/// two descriptors, with four such tests running at once), and scales
/// down, saying so, when the hard limit is too low.
#[cfg(unix)]
pub fn connections(want: usize) -> usize {
    /// Tests that may open `want` connections at the same time.
    const AT_ONCE: u64 = 4;
    /// Descriptors kept for everything else: the runtime, files, pipes.
    const SPARE: u64 = 256;
    let needed = want as u64 * 2 * AT_ONCE + SPARE;
    let limit = rlimit::increase_nofile_limit(needed).unwrap_or(1024);
    if limit >= needed {
        return want;
    }
    let n = ((limit.saturating_sub(SPARE)) / (2 * AT_ONCE)) as usize;
    eprintln!(
        "open-file limit is {limit} (RLIMIT_NOFILE hard limit too low for {needed}): \
         this test opens {n} connections instead of {want}"
    );
    n.max(1)
}

/// A stack the test drops on purpose, to exercise the background path: it
/// declares its drop a normal cancellation (`set_cancellable`), so strict
/// mode (`TOKIO_EXIT_STACK_STRICT=1`) does not panic for it. The creation
/// site is the caller's.
#[track_caller]
pub fn cancellable() -> tokio_exit_stack::AsyncExitStack {
    let mut stack = tokio_exit_stack::AsyncExitStack::new();
    stack.set_cancellable(true);
    stack
}

/// Drops a stack that forgot its `aclose`, on purpose: the path the WARN
/// event and strict mode exist for. With strict mode on, the drop of a
/// stack holding entries must panic here (after handing the cleanup off);
/// this checks that it does exactly then, and carries on.
#[track_caller]
pub fn drop_forgotten(stack: tokio_exit_stack::AsyncExitStack) {
    let holds_entries = !stack.is_empty();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(stack))).is_err();
    assert_eq!(
        panicked,
        tokio_exit_stack::strict::is_on() && holds_entries,
        "a forgotten aclose panics at the drop site in strict mode, and only then"
    );
}

/// Every file of the library's `src/`, with its code before any
/// `#[cfg(test)]` (unit tests may do what library code must not).
pub fn library_sources() -> Vec<(std::path::PathBuf, String)> {
    let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    let mut sources = Vec::new();
    while let Some(path) = dirs.pop() {
        if path.is_dir() {
            dirs.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let code = source.split("#[cfg(test)]").next().unwrap().to_owned();
        sources.push((path, code));
    }
    sources
}

/// Polls `future` until it has returned `Pending` `k` times, then drops
/// it, as a timeout or a lost `select!` branch would (`k = 0`: dropped
/// before its first poll). `Some(output)` if it finished first.
pub async fn cancel_after_pendings<F: std::future::Future>(future: F, k: usize) -> Option<F::Output> {
    if k == 0 {
        drop(future);
        return None;
    }
    let mut future = std::pin::pin!(future);
    let mut pendings = 0;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => {
            pendings += 1;
            if pendings == k {
                std::task::Poll::Ready(None)
            } else {
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// Runs `during` (a runtime's shutdown, say) while a `drain` waits on a
/// runtime of its own, on another thread, and returns that drain's
/// report: what ended during `during`, lost cleanups included.
pub fn drain_during(during: impl FnOnce()) -> tokio_exit_stack::background::DrainReport {
    let (waiting, started) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut report = std::pin::pin!(tokio_exit_stack::drain(std::time::Duration::from_secs(60)));
                // One poll starts the wait; then `during` may run.
                std::future::poll_fn(|cx| {
                    assert!(report.as_mut().poll(cx).is_pending());
                    std::task::Poll::Ready(())
                })
                .await;
                waiting.send(()).unwrap();
                report.await
            })
    });
    started.recv().unwrap();
    during();
    watcher.join().unwrap()
}
