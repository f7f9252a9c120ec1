//! The error chain, as exact as Python's (S11, S14, S16): the very objects
//! raised, nested scopes flattened as CPython chains nested `async with`
//! blocks, no error reachable twice, and the whole chain in view.
//!
//! The chains CPython gives for the same shapes come from
//! `tests/cpython/chains.py`, run here with `python3`.

mod common;

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, Mutex};

use tokio_exit_stack::{
    AsyncExitStack, BoxError, Error, Flow, Pending, error::Cause, error::ResourceError, scope, scope_suppressible,
};

/// An error that may hold the pending error it replaced as its cause
/// (Python's `raise E(msg) from exc`).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
struct E {
    msg: String,
    #[source]
    cause: Option<Cause>,
}

fn e(msg: impl Into<String>) -> E {
    E {
        msg: msg.into(),
        cause: None,
    }
}

/// An exit that raises a new error chained to the pending one.
fn chaining(msg: &'static str) -> impl FnOnce(Pending) -> std::future::Ready<Result<Flow, E>> + Send + 'static {
    move |pending| {
        std::future::ready(match pending.cause() {
            Some(cause) => Err(E {
                msg: msg.into(),
                cause: Some(cause),
            }),
            None => Ok(Flow::Propagate),
        })
    }
}

/// The chain as `tests/cpython/chains.py` prints it: links newest first,
/// each followed by its causes.
fn links(err: &Error) -> String {
    err.iter()
        .map(|link| {
            let mut parts = vec![link.to_string()];
            let mut cause = link.source();
            while let Some(c) = cause {
                parts.push(c.to_string());
                cause = c.source();
            }
            parts.join(" <- ")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn cpython(scenario: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cpython/chains.py"))
        .output()
        .expect("python3 runs the CPython side of these tests");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("{scenario}: ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {scenario} in {stdout}"))
        .to_owned()
}

both_flavours! {
    async fn s14_an_exit_that_kept_its_pending_gets_back_the_very_objects() {
        // Every exit stores the `Pending` it was told, and raises a new
        // error whose source is the pending one.
        let kept: Arc<Mutex<Vec<Pending>>> = Arc::default();
        let raised: Arc<Mutex<Vec<usize>>> = Arc::default();
        let err = scope(async |stack| {
            for n in [4, 3, 2] {
                let (kept, raised) = (kept.clone(), raised.clone());
                stack.push_async_exit(move |pending: Pending| async move {
                    kept.lock().unwrap().push(pending.clone());
                    let error = Box::new(E { msg: format!("exc {n}"), cause: pending.cause() });
                    raised.lock().unwrap().push(&*error as *const E as usize);
                    Err::<Flow, BoxError>(error)
                });
            }
            Err(e("exc 1"))?;
            Ok(())
        })
        .await
        .unwrap_err();

        // One link, exc 4, with the others as its causes: nothing twice.
        assert_eq!(links(&err), "exc 4 <- exc 3 <- exc 2 <- exc 1");
        let link = err.downcast_ref::<E>().expect("the link downcasts to the type raised");
        assert_eq!(link as *const E as usize, raised.lock().unwrap()[2], "the very object exc 4");
        // Each cause is the very object the previous exit was told.
        let kept = kept.lock().unwrap();
        let exc3 = link.source().unwrap();
        assert!(std::ptr::eq(
            exc3 as *const dyn StdError as *const (),
            kept[2].error().unwrap() as *const dyn StdError as *const ()
        ));
        assert_eq!(exc3 as *const dyn StdError as *const () as usize, raised.lock().unwrap()[1]);
        let exc1 = kept[0].error().unwrap();
        assert_eq!(exc1.to_string(), "exc 1");
        assert!(exc1.is::<E>(), "the body's error is told as itself, not wrapped");
        assert_eq!(err.iter().last().unwrap().downcast_ref::<E>().unwrap().msg, "exc 4");
    }
}

both_flavours! {
    async fn s14_an_exit_that_logs_its_pending_later_leaves_each_link_downcastable() {
        let kept: Arc<Mutex<Option<Pending>>> = Arc::default();
        let mut stack = AsyncExitStack::new();
        let k = kept.clone();
        stack.push_exit(move |pending: &Pending| {
            *k.lock().unwrap() = Some(pending.clone()); // to log it later
            Ok::<_, E>(Flow::Propagate)
        });
        stack.callback(|| Err::<(), _>(io::Error::other("second")));
        stack.callback(|| Err::<(), _>(e("first")));
        let err = stack.aclose().await.unwrap_err();
        let kept = kept.lock().unwrap().clone().unwrap();
        assert_eq!(err.len(), 2);
        let told: Vec<*const ()> = kept.iter().map(|e| e as *const dyn StdError as *const ()).collect();
        let links: Vec<*const ()> = err.iter().map(|e| e as *const dyn StdError as *const ()).collect();
        assert_eq!(told, links, "the same objects, in the same order");
        assert!(err.iter().next().unwrap().is::<io::Error>());
        assert_eq!(err.downcast_ref::<E>().unwrap().msg, "first");
        assert!(err.is::<io::Error>());
    }
}

/// `async fn`s that use `scope`, called from another `scope`: the everyday
/// shape of nested scopes.
async fn nested_two_inner() -> Result<(), Error> {
    scope(async |s| {
        s.push_async_callback(|| async { Err::<(), _>(e("inner callback")) });
        Err(e("inner body"))?;
        Ok(())
    })
    .await
}

both_flavours! {
    async fn s14_nested_scopes_two_deep_flatten_as_cpython_chains_them() {
        let told: Arc<Mutex<Vec<String>>> = Arc::default();
        let t = told.clone();
        let err = scope(async |s| {
            s.push_exit(move |pending: &Pending| {
                // an outer exit sees the inner errors, each downcastable
                t.lock().unwrap().extend(pending.iter().map(|e| e.downcast_ref::<E>().unwrap().msg.clone()));
                Ok::<_, E>(Flow::Propagate)
            });
            s.push_async_callback(|| async { Err::<(), _>(e("outer callback")) });
            nested_two_inner().await?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), cpython("nested_two"));
        assert_eq!(err.len(), 3, "the inner errors are links of their own");
        assert!(err.iter().all(|l| l.is::<E>()));
        assert_eq!(*told.lock().unwrap(), ["outer callback", "inner callback", "inner body"]);
    }
}

async fn level3() -> Result<(), Error> {
    scope(async |s| {
        s.push_async_exit(chaining("level3 exit"));
        Err(e("level3 body"))?;
        Ok(())
    })
    .await
}

async fn level2() -> Result<(), Error> {
    scope(async |s| {
        s.push_async_callback(|| async { Err::<(), _>(e("level2 callback")) });
        // Python's `raise exc` of the pending error: in Rust, propagate it.
        s.push_exit(|_: &Pending| Ok::<_, E>(Flow::Propagate));
        level3().await?;
        Ok(())
    })
    .await
}

both_flavours! {
    async fn s14_nested_scopes_three_deep_flatten_as_cpython_chains_them() {
        let err = scope(async |s| {
            s.push_async_exit(chaining("level1 exit"));
            s.push_async_callback(|| async { Err::<(), _>(e("level1 callback")) });
            level2().await?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), cpython("nested_three"));
        assert_eq!(err.len(), 3);
    }
}

both_flavours! {
    async fn s16_a_new_error_chained_to_the_pending_one_replaces_it_bpo_20317() {
        let err = scope(async |s| {
            for msg in ["exc 4", "exc 3", "exc 2"] {
                s.push_async_exit(chaining(msg));
            }
            Err(e("exc 1"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), cpython("bpo_20317"));
        assert_eq!(err.len(), 1);
        // A walk of links and causes visits every error exactly once.
        assert_eq!(format!("{err:#}"), "exc 4: exc 3: exc 2: exc 1");
    }
}

both_flavours! {
    async fn s16_only_the_pending_links_in_the_new_errors_chain_are_replaced() {
        // Pending: body, then "callback" (an unrelated error). An exit chains
        // to the newest only: "body" stays a link of its own.
        let err = scope(async |s| {
            s.push_async_exit(chaining("exit"));
            s.callback(|| Err::<(), _>(e("callback")));
            Err(e("body"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), "exit <- callback | body");

        // A returned `Error` whose links include the pending error, by
        // identity (a nested stack unwound with the outer pending error,
        // handing it back), adds it once.
        let err = scope(async |s| {
            s.push_async_exit(|pending: Pending| async move {
                let mut inner = AsyncExitStack::new();
                let p = pending.clone();
                inner.push_exit(move |_: &Pending| match p.cause() {
                    Some(cause) => Err(E { msg: "inner exit".into(), cause: Some(cause) }),
                    None => Ok(Flow::Propagate),
                });
                inner.callback(|| Err::<(), _>(e("inner callback")));
                inner.aclose().await.map(|()| Flow::Propagate)
            });
            Err(e("body"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), "inner exit <- body | inner callback");
    }
}

both_flavours! {
    async fn s14_the_alternate_display_shows_a_five_deep_chain_once() {
        let err = scope(async |s| {
            for msg in ["five", "four", "three", "two"] {
                s.push_async_exit(chaining(msg));
            }
            Err(e("one"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        let shown = format!("{err:#}");
        assert_eq!(shown, "five: four: three: two: one");
        for name in ["one", "two", "three", "four", "five"] {
            assert_eq!(shown.matches(name).count(), 1, "{name} once in {shown}");
        }
        // One link: `{}` is its own message, `source()` its own source.
        assert_eq!(err.to_string(), "five");
        assert_eq!(err.source().unwrap().to_string(), "four");
    }
}

both_flavours! {
    async fn s14_several_links_display_each_message_once_with_no_source() {
        let err = scope(async |s| {
            s.callback(|| Err::<(), _>(E { msg: "close failed".into(), cause: Some(Pending::new(io::Error::other("reset by peer")).cause().unwrap()) }));
            s.callback(|| Err::<(), _>(e("flush failed")));
            Err(e("request failed"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 3);
        assert!(err.source().is_none(), "links are reached with iter(), not source()");
        assert_eq!(
            err.to_string(),
            "3 errors while unwinding, newest first: close failed; then flush failed; then request failed"
        );
        assert_eq!(
            format!("{err:#}"),
            "3 errors while unwinding, newest first: close failed: reset by peer; then flush failed; then request failed"
        );
        // anyhow's report walks `source()`: each message once.
        let report = format!("{:#}", anyhow::Error::from(err));
        for name in ["close failed", "flush failed", "request failed"] {
            assert_eq!(report.matches(name).count(), 1, "{name} once in {report}");
        }
    }
}

both_flavours! {
    async fn s11_pending_iter_shows_every_pending_error_newest_first() {
        let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let record = |seen: &Arc<Mutex<Vec<Vec<String>>>>| {
            let seen = seen.clone();
            move |pending: Pending| async move {
                seen.lock().unwrap().push(pending.iter().map(|e| e.to_string()).collect());
                Ok::<_, E>(Flow::Propagate)
            }
        };
        let err = scope_suppressible(async |s| {
            s.push_async_exit(record(&seen));
            s.push_exit(|_: &Pending| Ok::<_, E>(Flow::Suppress));
            s.push_async_exit(record(&seen));
            s.callback(|| Err::<(), _>(io::Error::other("value error")));
            s.push_async_exit(record(&seen));
            Err(e("zero division"))?;
            Ok(())
        })
        .await;
        assert!(err.is_ok(), "suppressed");
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], ["zero division"]);
        assert_eq!(seen[1], ["value error", "zero division"], "what the newest replaced, back to the body's");
        assert!(seen[2].is_empty(), "nothing after a suppression");
        // Each is downcastable: the same objects the final error holds.
        let pending = Pending::new(io::Error::other("x"));
        assert!(pending.iter().next().unwrap().is::<io::Error>());
        assert_eq!(Pending::none().iter().count(), 0);
    }
}

both_flavours! {
    async fn s14_an_error_converts_into_an_io_error_for_io_result_functions() {
        async fn close_all(stack: &mut AsyncExitStack) -> io::Result<()> {
            stack.aclose().await?;
            Ok(())
        }
        // One I/O error: itself.
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(io::Error::new(io::ErrorKind::BrokenPipe, "alone")));
        let err = close_all(&mut stack).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(err.to_string(), "alone");
        assert!(!err.get_ref().unwrap().is::<Error>(), "the very io::Error, not a wrapper");

        // One resource error: its source's kind.
        let mut stack = AsyncExitStack::new();
        stack.callback(|| {
            Err::<(), _>(ResourceError::new("conn", "shutdown", io::Error::from(io::ErrorKind::ConnectionReset)))
        });
        let err = close_all(&mut stack).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(err.get_ref().unwrap().is::<Error>());

        // An I/O error an exit still holds: the same kind, wrapping.
        let kept: Arc<Mutex<Option<Pending>>> = Arc::default();
        let k = kept.clone();
        let mut stack = AsyncExitStack::new();
        stack.push_exit(move |p: &Pending| {
            *k.lock().unwrap() = Some(p.clone());
            Ok::<_, E>(Flow::Propagate)
        });
        stack.callback(|| Err::<(), _>(io::Error::from(io::ErrorKind::TimedOut)));
        let err = close_all(&mut stack).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().unwrap().is::<Error>());

        // Several: Other, wrapping the whole chain.
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(io::Error::from(io::ErrorKind::NotFound)));
        stack.callback(|| Err::<(), _>(e("second")));
        let err = close_all(&mut stack).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(err.get_ref().unwrap().downcast_ref::<Error>().unwrap().len(), 2);
    }
}

both_flavours! {
    async fn s16_errors_of_zero_size_or_at_a_wrappers_address_are_told_apart() {
        // Two zero-sized errors of one type share an address: both are kept.
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(std::fmt::Error));
        stack.callback(|| Err::<(), _>(std::fmt::Error));
        let err = stack.aclose().await.unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(format!("{err:#}").matches("formatting").count(), 2);

        // A wrapper whose cause is its first field shares its address: the
        // cause is still shown.
        #[derive(Debug, thiserror::Error)]
        #[error("flush failed")]
        struct FlushFailed(#[source] io::Error);
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(FlushFailed(io::Error::other("disk full"))));
        let err = stack.aclose().await.unwrap_err();
        assert_eq!(format!("{err:#}"), "flush failed: disk full");
    }
}

both_flavours! {
    /// A stack registered on another unwinds told the outer pending error,
    /// and the outer chain is CPython's for an `ExitStack` entered in
    /// another: the inner errors as their own links, none twice.
    async fn s37_a_stack_entered_in_another_chains_as_cpython_does() {
        let err = scope(async |outer| {
            outer.callback(|| Err::<(), _>(e("outer callback")));
            let inner = AsyncExitStack::new();
            inner.callback(|| Err::<(), _>(e("inner callback 1")));
            inner.push_async_exit(chaining("inner exit"));
            inner.callback(|| Err::<(), _>(e("inner callback 2")));
            outer.enter_async_context(inner).await?;
            outer.push_async_exit(chaining("outer exit"));
            Err(e("body"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), cpython("stack_in_stack"));
        assert_eq!(err.len(), 4);
    }
}

both_flavours! {
    /// An inner stack that adds nothing hands the pending error on as it
    /// is; one whose exit suppresses it suppresses it for the outer stack.
    async fn s37_a_stack_entered_in_another_propagates_or_suppresses_the_outer_error() {
        let told = Arc::new(Mutex::new(None));
        let seen = told.clone();
        let err = scope(async |outer| {
            let inner = AsyncExitStack::new();
            inner.push_exit(move |pending| {
                *seen.lock().unwrap() = pending.error().map(|e| e.to_string());
                Ok::<_, io::Error>(Flow::Propagate)
            });
            outer.push_resource(inner);
            Err(e("body"))?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(links(&err), "body");
        assert_eq!(told.lock().unwrap().as_deref(), Some("body"), "the inner exit was told");

        let value = scope_suppressible(async |outer| {
            let inner = AsyncExitStack::new();
            inner.push_exit(|_| Ok::<_, io::Error>(Flow::Suppress));
            outer.push_resource(inner);
            Err(e("body"))?;
            Ok(1)
        })
        .await
        .unwrap();
        assert_eq!(value, None, "suppressed by the inner stack");
    }
}
