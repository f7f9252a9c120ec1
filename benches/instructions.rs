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
//! `erased-resources`, each also as `filtered-<workload>` (under a
//! subscriber that filters the crate out); the second argument is the
//! number of entries. Each
//! runs 1,000 register + unwind rounds after one warm-up round.

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` runs every bench binary with `--bench`: do nothing then.
    let (Some(workload), Some(n)) = (args.get(1).filter(|a| !a.starts_with('-')), args.get(2)) else {
        return;
    };
    let n: usize = n.parse().expect("number of entries");
    // `filtered-<workload>`: the same under a subscriber that filters the
    // crate's spans and events out (only ERROR passes).
    let (workload, _filtered) = match workload.strip_prefix("filtered-") {
        Some(rest) => {
            use tracing_subscriber::prelude::*;
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(
                    tracing_subscriber::filter::Targets::new().with_target("tokio_exit_stack", tracing::Level::ERROR),
                ),
            );
            (rest, Some(tracing::subscriber::set_default(subscriber)))
        }
        None => (workload.as_str(), None),
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        round(workload, n).await;
        for _ in 0..1000 {
            round(workload, n).await;
        }
    });
}
