//! A private PostgreSQL server for tests and benchmarks: the distribution's binaries,
//! `initdb` into a directory of its own, reached on a Unix socket only, stopped when the
//! process that started it ends (even by a kill). Each test takes a database of its own,
//! copied from a template that is migrated once.
//!
//! PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
//! distribution's package makes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How the server is run.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    /// Whether commits wait for the disk: off for functional tests, on for benchmarks. A
    /// commit is in the operating system's hands either way (`synchronous_commit` stays on),
    /// so it survives the server's crash.
    pub fsync: bool,
    pub max_connections: u32,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        ScratchOptions {
            fsync: false,
            max_connections: 200,
        }
    }
}

/// A running server. Dropping it stops the server and removes its directory.
pub struct ScratchServer {
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    options: ScratchOptions,
    child: Mutex<Option<Child>>,
    databases: AtomicUsize,
    template: Mutex<bool>,
}

const TEMPLATE: &str = "merpati_template";

impl ScratchServer {
    /// Starts a server in a new directory under the system's temporary directory.
    pub fn start(options: ScratchOptions) -> Result<ScratchServer, String> {
        let bin = binaries()?;
        remove_abandoned();
        let dir = std::env::temp_dir().join(format!(
            "merpati-pg-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{e}"))?;
        let owner = server_user()?;
        if let Some((uid, gid)) = owner {
            chown_all(&dir, uid, gid)?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "-D",
            ])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = initdb
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let server = ScratchServer {
            dir,
            bin,
            owner,
            options,
            child: Mutex::new(None),
            databases: AtomicUsize::new(0),
            template: Mutex::new(false),
        };
        server.run()?;
        Ok(server)
    }

    /// Starts the server process on the directory (again, after `stop`).
    pub fn run(&self) -> Result<(), String> {
        let mut child = self.child.lock().expect("child lock");
        if child.is_some() {
            return Ok(());
        }
        let fsync = if self.options.fsync { "on" } else { "off" };
        let mut postgres = Command::new(self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses="])
            .args(["-c", &format!("fsync={fsync}")])
            .args(["-c", &format!("full_page_writes={fsync}")])
            .args([
                "-c",
                &format!("max_connections={}", self.options.max_connections),
            ])
            .args(["-c", "shared_buffers=256MB"])
            .args(["-c", "log_min_messages=fatal"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut postgres, self.owner);
        // The server ends with the process that started it, however that one ends. The
        // signal is sent when the thread that forked dies, so a thread that lives as long
        // as the process forks it.
        let spawned = spawn_from_keeper(postgres)?;
        *child = Some(spawned);
        drop(child);
        self.wait_ready()
    }

    /// Stops the server at once (as a crash would, when `immediate`), keeping its data.
    pub fn stop(&self, immediate: bool) {
        if let Some(mut child) = self.child.lock().expect("child lock").take() {
            let signal = if immediate {
                libc::SIGQUIT
            } else {
                libc::SIGINT
            };
            // SAFETY: a signal to our own child, whose pid has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&self.url("postgres"), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the server did not start: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A `database_url` for one of the server's databases.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", percent_path(&self.dir))
    }

    /// A new, empty database (not migrated).
    pub fn empty_database(&self) -> Result<String, String> {
        let name = self.next_name();
        self.admin(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// A new database at the newest schema, copied from a template migrated once with
    /// `migrate`.
    pub fn fresh_database(
        &self,
        migrate: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<String, String> {
        {
            let mut made = self.template.lock().expect("template lock");
            if !*made {
                self.admin(&format!("CREATE DATABASE {TEMPLATE}"))?;
                migrate(&self.url(TEMPLATE))?;
                *made = true;
            }
        }
        let name = self.next_name();
        self.admin(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))?;
        Ok(self.url(&name))
    }

    fn next_name(&self) -> String {
        format!("m{}", self.databases.fetch_add(1, Ordering::Relaxed))
    }

    fn admin(&self, sql: &str) -> Result<(), String> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| format!("cannot connect: {e}"))?;
        client.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))
    }
}

/// One server for the crate's unit tests, started by the first that asks; each test takes
/// a database of its own.
#[cfg(test)]
pub(crate) fn shared() -> &'static ScratchServer {
    static SERVER: std::sync::OnceLock<ScratchServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| ScratchServer::start(Default::default()).unwrap())
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// The distribution's server binaries: `/usr/lib/postgresql/<newest>/bin`, or the
/// directory of an `initdb` on the path.
fn binaries() -> Result<PathBuf, String> {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = versions {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .ok_or_else(|| "no PostgreSQL server: install the postgresql package".to_string())
}

/// As root, the `postgres` user's ids; otherwise the server runs as we do.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err("running as root needs the postgres user to run the server".into());
    }
    // SAFETY: not null, as checked.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe, and nothing else runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
}

fn chown_all(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let chown = |path: &Path| {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to postgres: {e}", path.display()))
    };
    chown(dir)?;
    chown(&dir.join("data"))
}

/// Forks from a thread that lives as long as the process, so that the parent-death
/// signal comes only when the process ends.
fn spawn_from_keeper(mut command: Command) -> Result<Child, String> {
    type Request = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("scratch-postgres".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // Every sender gone: park rather than end, since the children die with
                // this thread.
                loop {
                    std::thread::park();
                }
            })
            .expect("a thread");
        Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    command.stdin(Stdio::null());
    keeper
        .lock()
        .expect("keeper lock")
        .send((command, reply))
        .map_err(|_| "the keeper thread is gone".to_string())?;
    answer
        .recv()
        .map_err(|_| "the keeper thread is gone".to_string())?
        .map_err(|e| format!("cannot start postgres: {e}"))
}

/// Directories of servers whose process has ended without removing them.
fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("merpati-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A path as the host part of a URL (the driver takes a socket directory there).
fn percent_path(path: &Path) -> String {
    path.to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F")
}
