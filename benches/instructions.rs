//! A fixed workload for `valgrind --tool=callgrind`, which counts
//! instructions repeatably on a shared, noisy machine (issue: performance,
//! item 3). Not a timing bench: it runs one named workload a fixed number of
//! times and exits.
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/deps/instructions-* stack-callbacks 100
//! callgrind_annotate cg.out | head -30
//! ```
//!
//! Workloads: `stack-callbacks`, `erased-callbacks`, `stack-resources`,
//! `erased-resources`, `stack-pushed-resources`, `stack-sync-callbacks`,
//! `erased-sync-callbacks`, each also as `filtered-<workload>` (under a
//! subscriber that filters the crate out) and `recording-<workload>` (one
//! that records the crate's spans, printing nothing); the second argument
//! is the number of entries. Each
//! runs 1,000 register + unwind rounds after one warm-up round (an
//! optional third argument sets another number, for `perf record`).

mod common;

use common::{Erased, Resource, cleanup, unwind_erased};
use std::hint::black_box;

use tokio_exit_stack::AsyncExitStack;

async fn round(workload: &str, n: usize) {
    match workload {
        "stack-callbacks" => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                stack.push_async_callback(move || cleanup(i));
            }
            stack.aclose().await.unwrap();
        }
        "stack-resources" => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                black_box(&stack.enter_async_context(Resource(i as u64)).await.unwrap().0);
            }
            stack.aclose().await.unwrap();
        }
        "stack-pushed-resources" => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                black_box(&stack.push_resource(Resource(i as u64)).0);
            }
            stack.aclose().await.unwrap();
        }
        "stack-sync-callbacks" => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                stack.callback(move || {
                    black_box(i);
                });
            }
            stack.aclose().await.unwrap();
        }
        "erased-sync-callbacks" => {
            let mut list: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
            for i in 0..n {
                list.push(Box::new(move || {
                    black_box(i);
                }));
            }
            while let Some(f) = list.pop() {
                f();
            }
        }
        "erased-callbacks" | "erased-resources" => {
            let mut list: Vec<Erased> = Vec::new();
            for i in 0..n {
                if workload == "erased-callbacks" {
                    list.push(Box::new(move || Box::pin(cleanup(i))));
                } else {
                    let r = Resource(i as u64);
                    black_box(&r.0);
                    list.push(Box::new(move || Box::pin(r.close())));
                }
            }
            unwind_erased(list).await;
        }
        other => panic!("unknown workload {other}"),
    }
}

/// Records every span it is given (counts them); prints nothing.
struct Recording;

static SPANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recording {
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        SPANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` runs every bench binary with `--bench`: do nothing then.
    let (Some(workload), Some(n)) = (args.get(1).filter(|a| !a.starts_with('-')), args.get(2)) else {
        return;
    };
    let n: usize = n.parse().expect("number of entries");
    // An optional third argument: the number of rounds (for `perf record`).
    let rounds: usize = args.get(3).map_or(1000, |r| r.parse().expect("number of rounds"));
    // `filtered-<workload>`: the same under a subscriber that filters the
    // crate's spans and events out (only ERROR passes).
    // `recording-<workload>`: under one that records the crate's spans
    // (a layer that counts them, and prints nothing).
    use tracing_subscriber::prelude::*;
    let targets = |level| tracing_subscriber::filter::Targets::new().with_target("tokio_exit_stack", level);
    let (workload, _subscriber) = if let Some(rest) = workload.strip_prefix("filtered-") {
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(targets(tracing::Level::ERROR)),
        );
        (rest, Some(tracing::subscriber::set_default(subscriber)))
    } else if let Some(rest) = workload.strip_prefix("recording-") {
        let subscriber = tracing_subscriber::registry().with(Recording.with_filter(targets(tracing::Level::TRACE)));
        (rest, Some(tracing::subscriber::set_default(subscriber)))
    } else {
        (workload.as_str(), None)
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        round(workload, n).await;
        for _ in 0..rounds {
            round(workload, n).await;
        }
    });
}
