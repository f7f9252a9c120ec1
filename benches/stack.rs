//! The stack against its baselines, side by side in one run.
//!
//! `cargo bench --bench stack`; `python3 benches/compare.py` adds Python's
//! `contextlib.AsyncExitStack` and prints the table of BENCHMARKS.md.
//!
//! * `register_unwind/{callbacks,resources}/{impl}/{n}`: register `n`
//!   entries and unwind them, for `impl` = `stack` (this crate),
//!   `erased` (the least a type-erased cleanup list costs: a `Vec` of boxed
//!   closures returning boxed futures) and `hand_written` (sequential
//!   awaits, no erasure at all). Throughput is per entry.
//! * `background/{stack,spawn}/{n}`: a stack dropped holding `n` entries,
//!   until its cleanup has finished, against a hand-written `tokio::spawn`
//!   of the same cleanup.
//! * `group_vs_sequential/{group,sequential}`: 1,000 exits that each await
//!   a 1 ms timer, concurrently in one group, or one after another.
//! * `tracing/{no_subscriber,filtered_out}`: the instrumentation's cost
//!   with no subscriber, and with one that filters the crate's spans out.

mod common;

use common::{Erased, Resource, cleanup, unwind_erased};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_exit_stack::AsyncExitStack;

const SIZES: [usize; 4] = [1, 10, 100, 1000];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn register_unwind(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("register_unwind/callbacks");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stack", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let mut stack = AsyncExitStack::new();
                for i in 0..n {
                    stack.push_async_callback(move || cleanup(i));
                }
                stack.aclose().await.unwrap();
            })
        });
        group.bench_with_input(BenchmarkId::new("erased", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let mut list: Vec<Erased> = Vec::new();
                for i in 0..n {
                    list.push(Box::new(move || Box::pin(cleanup(i))));
                }
                unwind_erased(list).await;
            })
        });
        group.bench_with_input(BenchmarkId::new("hand_written", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                for i in (0..n).rev() {
                    cleanup(i).await.unwrap();
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("register_unwind/resources");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stack", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let mut stack = AsyncExitStack::new();
                for i in 0..n {
                    let r = stack.enter_async_context(Resource(i as u64)).await.unwrap();
                    black_box(&r.0);
                }
                stack.aclose().await.unwrap();
            })
        });
        group.bench_with_input(BenchmarkId::new("erased", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let mut list: Vec<Erased> = Vec::new();
                for i in 0..n {
                    let r = Resource(i as u64);
                    black_box(&r.0);
                    list.push(Box::new(move || Box::pin(r.close())));
                }
                unwind_erased(list).await;
            })
        });
        group.bench_with_input(BenchmarkId::new("hand_written", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let mut held = Vec::with_capacity(n);
                for i in 0..n {
                    held.push(Resource(i as u64));
                }
                while let Some(r) = held.pop() {
                    r.close().await.unwrap();
                }
            })
        });
    }
    group.finish();
}

fn background(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("background");
    for n in [1usize, 100] {
        group.bench_with_input(BenchmarkId::new("stack", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let stack = AsyncExitStack::new();
                stack.push_async_callback(move || async move {
                    let _ = tx.send(());
                });
                for i in 1..n {
                    stack.push_async_callback(move || cleanup(i));
                }
                drop(stack);
                rx.await.unwrap();
            })
        });
        group.bench_with_input(BenchmarkId::new("spawn", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let mut list: Vec<Erased> = Vec::new();
                for i in 1..n {
                    list.push(Box::new(move || Box::pin(cleanup(i))));
                }
                tokio::spawn(async move {
                    unwind_erased(list).await;
                    let _ = tx.send(());
                });
                rx.await.unwrap();
            })
        });
    }
    group.finish();
}

fn group_vs_sequential(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("group_vs_sequential");
    group.sample_size(10);
    group.bench_function("group", |b| {
        b.to_async(&rt).iter(|| async {
            let mut stack = AsyncExitStack::new();
            let members = stack.enter_group();
            for _ in 0..1000 {
                members.push_async_callback(|| tokio::time::sleep(Duration::from_millis(1)));
            }
            stack.aclose().await.unwrap();
        })
    });
    group.bench_function("sequential", |b| {
        b.to_async(&rt).iter(|| async {
            let mut stack = AsyncExitStack::new();
            for _ in 0..1000 {
                stack.push_async_callback(|| tokio::time::sleep(Duration::from_millis(1)));
            }
            stack.aclose().await.unwrap();
        })
    });
    group.finish();
}

fn tracing_cost(c: &mut Criterion) {
    use tracing_subscriber::prelude::*;
    let rt = runtime();
    let mut group = c.benchmark_group("tracing");
    const N: usize = 100;
    group.throughput(Throughput::Elements(N as u64));
    let work = || async {
        let mut stack = AsyncExitStack::new();
        for i in 0..N {
            stack.push_async_callback(move || cleanup(i));
        }
        stack.aclose().await.unwrap();
    };
    group.bench_function("no_subscriber", |b| b.to_async(&rt).iter(work));
    let filtered =
        tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(
            tracing_subscriber::filter::Targets::new().with_target("tokio_exit_stack", tracing::Level::ERROR),
        ));
    let dispatch = tracing::Dispatch::new(filtered);
    group.bench_function("filtered_out", |b| {
        tracing::dispatcher::with_default(&dispatch, || b.to_async(&rt).iter(work))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = register_unwind, background, group_vs_sequential, tracing_cost
}
criterion_main!(benches);
