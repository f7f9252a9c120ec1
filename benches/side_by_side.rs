//! The crate against bare type-erased lists, measured side by side in one
//! process, interleaved sample by sample: the honest ratio.
//!
//! `cargo bench --bench side_by_side` (about a minute; `-- --quick` for a
//! short run). For each operation and size, every sample times each
//! implementation once (`rounds` register + unwind rounds of `n` entries),
//! in an order rotated per sample, so a slow minute hits every side alike;
//! the ratio of each sample is crate / baseline *within* the sample, and
//! the verdict is the median of those paired ratios, reported with its
//! spread (25th to 75th percentile). Baselines:
//!
//! * `fresh`: a bare `Vec` of boxed closures (or boxed resources) made anew
//!   each round, as hand-written code would: the goals are against it;
//! * `reuse`: the same list keeping its vector across rounds, as the crate
//!   keeps a small spare vector per thread: given the same advantage.
//!
//! Sizes 1, 10, 100, 1,000 and 100,000; operations: async callbacks,
//! entered resources, sync callbacks, `scope`. Prints a markdown table and
//! JSON on the last line, for `compare.py`.
//!
//! Tracing's cost is counted with callgrind instead (`instructions.rs`,
//! `filtered-` and `recording-` workloads): switching the dispatcher
//! between interleaved samples, as this harness would have to, makes
//! tracing re-evaluate callsite interest, and the timings then measure
//! that, not the crate (a filtering subscriber timed 7x slower here, while
//! it costs no instruction per entry).

mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{BoxFuture, Erased, Resource, cleanup};
use tokio::runtime::Runtime;
use tokio_exit_stack::{AsyncExitStack, scope};

/// A bare list's resource entry: the resource boxed, its close boxed.
trait BareExit: Send {
    fn close(self: Box<Self>) -> BoxFuture;
}

impl BareExit for Resource {
    fn close(self: Box<Self>) -> BoxFuture {
        Box::pin(async move {
            black_box(self.0);
            Ok(())
        })
    }
}

type Sync = Box<dyn FnOnce() + Send>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    AsyncCallbacks,
    Resources,
    SyncCallbacks,
    Scope,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AsyncCallbacks => "async callbacks",
            Op::Resources => "entered resources",
            Op::SyncCallbacks => "sync callbacks",
            Op::Scope => "scope with async callbacks",
        }
    }

    /// The goal against the fresh bare list, at `n` entries.
    fn goal(self, n: usize) -> f64 {
        match (self, n) {
            (Op::AsyncCallbacks, 1) => 1.25,
            (Op::AsyncCallbacks, _) => 1.0,
            (Op::Resources, 1) => 1.25,
            (Op::Resources, _) => 1.15,
            (Op::SyncCallbacks, 1) => f64::INFINITY, // no goal at 1
            (Op::SyncCallbacks, _) => 1.25,
            (Op::Scope, _) => 1.25,
        }
    }
}

/// Kept across rounds by the `reuse` baseline.
#[derive(Default)]
struct Reused {
    erased: Vec<Erased>,
    resources: Vec<Box<dyn BareExit>>,
    sync: Vec<Sync>,
}

async fn crate_round(op: Op, n: usize) {
    match op {
        Op::AsyncCallbacks => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                stack.push_async_callback(move || cleanup(i));
            }
            stack.aclose().await.unwrap();
        }
        Op::Resources => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                let r = stack.enter_async_context(Resource(i as u64)).await.unwrap();
                black_box(&r.0);
            }
            stack.aclose().await.unwrap();
        }
        Op::SyncCallbacks => {
            let mut stack = AsyncExitStack::new();
            for i in 0..n {
                stack.callback(move || {
                    black_box(i);
                });
            }
            stack.aclose().await.unwrap();
        }
        Op::Scope => {
            scope(async |stack| {
                for i in 0..n {
                    stack.push_async_callback(move || cleanup(i));
                }
                Ok(())
            })
            .await
            .unwrap();
        }
    }
}

/// One round of a bare list; with `reuse`, its vector comes from and goes
/// back to `store` (emptied), as the crate's spare vector does.
async fn bare_round(op: Op, n: usize, store: &mut Reused, reuse: bool) {
    fn take<T>(v: &mut Vec<T>, reuse: bool) -> Vec<T> {
        if reuse { std::mem::take(v) } else { Vec::new() }
    }
    match op {
        Op::AsyncCallbacks | Op::Scope => {
            let mut list = take(&mut store.erased, reuse);
            for i in 0..n {
                list.push(Box::new(move || Box::pin(cleanup(i)) as BoxFuture));
            }
            // `scope`'s bare equivalent: the same list inside an async block
            // whose result is checked.
            let result: Result<(), ()> = async {
                while let Some(f) = list.pop() {
                    let _ = f().await;
                }
                Ok(())
            }
            .await;
            black_box(result).unwrap();
            if reuse {
                store.erased = list;
            }
        }
        Op::Resources => {
            let mut list = take(&mut store.resources, reuse);
            for i in 0..n {
                list.push(Box::new(Resource(i as u64)));
                black_box(list.last());
            }
            while let Some(r) = list.pop() {
                let _ = r.close().await;
            }
            if reuse {
                store.resources = list;
            }
        }
        Op::SyncCallbacks => {
            let mut list = take(&mut store.sync, reuse);
            for i in 0..n {
                list.push(Box::new(move || {
                    black_box(i);
                }));
            }
            while let Some(f) = list.pop() {
                f();
            }
            if reuse {
                store.sync = list;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Crate,
    Fresh,
    Reuse,
}

/// Times `rounds` rounds of one side, in ns per entry.
async fn time(side: Side, op: Op, n: usize, rounds: usize, store: &mut Reused) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        match side {
            Side::Crate => crate_round(op, n).await,
            Side::Fresh => bare_round(op, n, store, false).await,
            Side::Reuse => bare_round(op, n, store, true).await,
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * n) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[(3 * v.len()) / 4])
}

struct Row {
    op: Op,
    n: usize,
    crate_ns: f64,
    fresh_ns: f64,
    reuse_ns: f64,
    ratio: f64,
    spread: (f64, f64),
    ratio_reuse: f64,
}

fn measure(rt: &Runtime, op: Op, n: usize, samples: usize) -> Row {
    // About 1 ms of work per side and sample.
    let rounds = (20_000 / n).max(1);
    rt.block_on(async {
        let mut store = Reused::default();
        // Warm up every side (allocator, spare vectors).
        for side in [Side::Crate, Side::Fresh, Side::Reuse] {
            time(side, op, n, rounds, &mut store).await;
        }
        let (mut c, mut f, mut r, mut ratios, mut ratios_reuse) = (vec![], vec![], vec![], vec![], vec![]);
        let orders = [
            [Side::Crate, Side::Fresh, Side::Reuse],
            [Side::Fresh, Side::Reuse, Side::Crate],
            [Side::Reuse, Side::Crate, Side::Fresh],
        ];
        for sample in 0..samples {
            let mut got = [0.0; 3];
            for side in orders[sample % 3] {
                let ns = time(side, op, n, rounds, &mut store).await;
                got[side as usize] = ns;
            }
            c.push(got[0]);
            f.push(got[1]);
            r.push(got[2]);
            ratios.push(got[0] / got[1]);
            ratios_reuse.push(got[0] / got[2]);
        }
        Row {
            op,
            n,
            crate_ns: median(c),
            fresh_ns: median(f),
            reuse_ns: median(r),
            ratio: median(ratios.clone()),
            spread: quartiles(ratios),
            ratio_reuse: median(ratios_reuse),
        }
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 9 } else { 31 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes: &[usize] = &[1, 10, 100, 1_000, 100_000];
    let mut rows = Vec::new();
    for op in [Op::AsyncCallbacks, Op::Resources, Op::SyncCallbacks, Op::Scope] {
        for &n in sizes {
            let row = measure(&rt, op, n, if n == 100_000 { samples.min(9) } else { samples });
            eprintln!("{} {}: {:.2}x", op.name(), n, row.ratio);
            rows.push(row);
        }
    }

    println!(
        "| operation | entries | crate ns/entry | bare, fresh vec | bare, reused vec | crate / fresh (median, p25-p75) | goal | crate / reused |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|");
    let mut json = Vec::new();
    for r in &rows {
        let goal = r.op.goal(r.n);
        let verdict = if goal.is_infinite() {
            "none".to_owned()
        } else if r.ratio <= goal {
            format!("≤ {goal:.2}x: met")
        } else {
            format!("≤ {goal:.2}x: MISSED")
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2}x ({:.2}-{:.2}) | {} | {:.2}x |",
            r.op.name(),
            r.n,
            r.crate_ns,
            r.fresh_ns,
            r.reuse_ns,
            r.ratio,
            r.spread.0,
            r.spread.1,
            verdict,
            r.ratio_reuse
        );
        json.push(format!(
            "{{\"op\":\"{}\",\"n\":{},\"crate\":{:.2},\"fresh\":{:.2},\"reuse\":{:.2},\"ratio\":{:.3},\"p25\":{:.3},\"p75\":{:.3},\"ratio_reuse\":{:.3}}}",
            r.op.name(),
            r.n,
            r.crate_ns,
            r.fresh_ns,
            r.reuse_ns,
            r.ratio,
            r.spread.0,
            r.spread.1,
            r.ratio_reuse
        ));
    }
    println!("JSON {{\"rows\":[{}]}}", json.join(","));
}
