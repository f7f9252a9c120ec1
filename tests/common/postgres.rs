//! A real PostgreSQL server for the tests that need one, from the Debian
//! packages (`apt-get install -y postgresql`): a new cluster made with
//! `initdb` under cargo's target temporary directory, started once per
//! test binary on a free loopback port (127.0.0.1 only, no Unix socket),
//! and stopped when the test process ends (the server is told to quit
//! when its parent dies).
//!
//! Where PostgreSQL is not installed the tests that need it print a loud
//! SKIPPED message and pass, unless `TOKIO_EXIT_STACK_REQUIRE_POSTGRES` is
//! set (`.ci/run` sets it): then they fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running server.
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`, trusted, no password.
    pub url: String,
}

/// The binary's server, started on first use; `None` where PostgreSQL is
/// not installed (see the module docs).
pub fn server() -> Option<&'static Postgres> {
    static SERVER: OnceLock<Option<Postgres>> = OnceLock::new();
    SERVER
        .get_or_init(|| match start() {
            Ok(server) => Some(server),
            Err(why) if std::env::var_os("TOKIO_EXIT_STACK_REQUIRE_POSTGRES").is_some() => {
                panic!("PostgreSQL is required (TOKIO_EXIT_STACK_REQUIRE_POSTGRES) but could not start: {why}")
            }
            Err(why) => {
                eprintln!(
                    "\n*** SKIPPED: the PostgreSQL tests did not run: {why}. \
                     Install it with `apt-get install -y postgresql`. ***\n"
                );
                None
            }
        })
        .as_ref()
}

/// The newest `bin` directory of Debian's PostgreSQL packages, or
/// `TOKIO_EXIT_STACK_PG_BIN`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TOKIO_EXIT_STACK_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql ({e})"))?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no server under /usr/lib/postgresql".to_owned())
}

/// The `postgres` user's ids, when running as root (initdb and the server
/// refuse to run as root).
fn postgres_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: plain libc calls; the passwd record is read at once, on this
    // thread, before any other getpw* call could reuse it.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err("running as root and there is no postgres user".to_owned());
        }
        Ok(Some(((*pw).pw_uid, (*pw).pw_gid)))
    }
}

/// `command` run as `user` (if set), and sent SIGQUIT (immediate
/// shutdown) when the thread that spawned it ends.
fn as_server(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn start() -> Result<Postgres, String> {
    let bin = bin_dir()?;
    let user = postgres_user()?;
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale(base);
    let root = base.join(format!("postgres-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let data = root.join("data");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
    }
    let initdb = as_server(
        Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]),
        user,
    )
    .stdin(Stdio::null())
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let log = std::fs::File::create(root.join("server.log")).map_err(|e| format!("server log: {e}"))?;
    // The server's parent is a thread that never ends, so that the server
    // quits when the test process does, and not before.
    let (started, spawned) = std::sync::mpsc::channel();
    let (program, dir) = (bin.join("postgres"), data.clone());
    std::thread::spawn(move || {
        let child = as_server(
            Command::new(program)
                .arg("-D")
                .arg(dir)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k", ""])
                .args(["-c", "fsync=off", "-c", "max_connections=300"]),
            user,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
        let _ = started.send(child.map(|c| c.id()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    spawned
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("postgres: {e}"))?;
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let status = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .status()
            .map_err(|e| format!("pg_isready: {e}"))?;
        if status.success() {
            break;
        }
        if Instant::now() > ready {
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            return Err(format!("the server did not start in 60 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Postgres {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    })
}

/// Removes the clusters of earlier test processes that have ended.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("postgres-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
