//! `ngx-wsgi`: prints where the built module and nginx are, serves one app through them,
//! diagnoses a module that nginx will not load or a Python the workers cannot use, and turns an
//! NGINX Unit configuration into nginx's.
//!
//! ```text
//! ngx-wsgi paths
//! ngx-wsgi serve APP.py[:CALLABLE] [--asgi [--loop asyncio|uvloop]] [--host 127.0.0.1] [--port 8080] [--workers 1] [--threads 32] [--user NAME] [--reload]
//! ngx-wsgi doctor [--nginx PATH] [--module PATH] [--python-home DIR] [--user NAME]
//! ngx-wsgi from-unit UNIT.json [--listen [ADDRESS=]NEW_ADDRESS]... [--module PATH]
//! ```
//!
//! `serve` runs nginx as a child, hands it the signals its master acts on, and removes its
//! private prefix when it exits. With `--reload`, nginx gets a graceful reload (SIGHUP) whenever
//! a `.py` file under the app's directory changes; a change that breaks the app is refused by
//! nginx's configuration check and the running workers keep serving.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod doctor;
mod elf;
mod from_unit;

const MODULE_FILE: &str = "libngx_http_wsgi_module.so";

fn module_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().unwrap_or(Path::new(".")).join(MODULE_FILE)
}

/// The nginx the module was built against: the vendored build's binary, else the system's.
fn nginx_path() -> PathBuf {
    if let Some(dir) = option_env!("NGX_WSGI_NGINX_BUILD_DIR") {
        let built = Path::new(dir).join("nginx");
        if built.is_file() {
            return built;
        }
    }
    PathBuf::from("/usr/sbin/nginx")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  ngx-wsgi paths\n  ngx-wsgi serve APP.py[:CALLABLE] [--asgi [--loop asyncio|uvloop]] [--host 127.0.0.1] [--port 8080] [--workers 1] [--threads 32] [--user NAME] [--reload]\n  {}\n  {}",
        doctor::USAGE,
        from_unit::USAGE
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("paths") => {
            println!("module: {}", module_path().display());
            println!("nginx: {}", nginx_path().display());
            ExitCode::SUCCESS
        }
        Some("serve") => match serve(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ngx-wsgi serve: {e}");
                ExitCode::FAILURE
            }
        },
        Some("doctor") => doctor::main(
            &args[1..],
            doctor::Defaults {
                nginx: nginx_path(),
                module: module_path(),
            },
        ),
        Some("from-unit") => from_unit::main(&args[1..], module_path()),
        _ => usage(),
    }
}

struct ServeOptions {
    app: String,
    host: String,
    port: u16,
    workers: u32,
    threads: u32,
    reload: bool,
    /// `--user`: the workers' user when started as root.
    user: Option<String>,
    /// `--asgi`: an ASGI 3 app (`asgi_app`, callable `app` by default) instead of WSGI.
    asgi: bool,
    /// `--loop`: the ASGI apps' event loop (`asgi_event_loop`).
    event_loop: Option<String>,
}

fn parse_serve(args: &[String]) -> Result<ServeOptions, String> {
    let mut opts = ServeOptions {
        app: String::new(),
        host: "127.0.0.1".into(),
        port: 8080,
        workers: 1,
        threads: 32,
        reload: false,
        user: None,
        asgi: false,
        event_loop: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--host" => opts.host = value("--host")?,
            "--port" => {
                opts.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--workers" => {
                opts.workers = value("--workers")?
                    .parse()
                    .map_err(|e| format!("--workers: {e}"))?
            }
            "--threads" => {
                opts.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--reload" => opts.reload = true,
            "--user" => opts.user = Some(value("--user")?),
            "--asgi" => opts.asgi = true,
            "--loop" => match value("--loop")?.as_str() {
                l @ ("asyncio" | "uvloop") => opts.event_loop = Some(l.to_owned()),
                other => return Err(format!("--loop {other}: asyncio or uvloop")),
            },
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a if opts.app.is_empty() => opts.app = a.to_owned(),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    if opts.app.is_empty() {
        return Err("which app? give APP.py[:CALLABLE] or module[:CALLABLE]".into());
    }
    if opts.event_loop.is_some() && !opts.asgi {
        return Err("--loop is for ASGI apps: add --asgi".into());
    }
    Ok(opts)
}

/// Writes an nginx.conf for the app into a fresh prefix and replaces this process with nginx in
/// the foreground; Ctrl-C stops it.
fn serve(args: &[String]) -> Result<(), String> {
    let opts = parse_serve(args)?;
    let (target, callable) = match opts.app.rsplit_once(':') {
        Some((t, c)) => (t.to_owned(), Some(c.to_owned())),
        None => (opts.app.clone(), None),
    };
    // A file, as `wsgi_app` takes one (`.py`, or a path: mod_wsgi's `site.wsgi`), or one here.
    let is_file = target.ends_with(".py") || target.contains('/') || Path::new(&target).is_file();
    let target = if is_file {
        std::fs::canonicalize(&target)
            .map_err(|e| format!("{target}: {e}"))?
            .display()
            .to_string()
    } else {
        target
    };
    let app = match callable {
        Some(c) => format!("{target}:{c}"),
        None => target.clone(),
    };
    let prefix = private_dir()?;
    std::fs::create_dir(prefix.join("logs")).map_err(|e| format!("{}: {e}", prefix.display()))?;
    let module = module_path();
    if !module.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release`",
            module.display()
        ));
    }
    // What serve sets itself is not passed on: nginx's workers get the first `env` of a name.
    let own: &[&str] = if opts.reload {
        &["PYTHONDONTWRITEBYTECODE"]
    } else {
        &[]
    };
    let mut main = passed_environment(own);
    if opts.reload {
        // A .pyc written in the same second as an edit of the same size would hide the edit.
        main.push_str("env PYTHONDONTWRITEBYTECODE=1;\n");
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        // Root starts nginx, but the workers never run as root: they run as --user, else as the
        // owner of the app file, else as nginx's default user.
        let owner = match (&opts.user, is_file) {
            (Some(name), _) => Some(uid_of(name)?),
            (None, true) => std::fs::metadata(&target).map(|m| m.uid()).ok(),
            (None, false) => None,
        };
        match owner.filter(|&uid| uid != 0).and_then(user_and_group) {
            Some((user, group)) => {
                main.push_str(&format!("user {} {};\n", quoted(&user)?, quoted(&group)?))
            }
            None if opts.user.is_some() => {
                return Err("--user root: the workers never run as root".into())
            }
            None => eprintln!(
                "ngx-wsgi: the app belongs to root; its workers run as nginx's default user \
                 (choose another with --user NAME)"
            ),
        }
    }
    let home = match std::env::var("VIRTUAL_ENV") {
        Ok(v) => format!("    wsgi_python_home {};\n", quoted(&v)?),
        Err(_) => String::new(),
    };
    let (directive, event_loop) = match (&opts.asgi, &opts.event_loop) {
        (false, _) => ("wsgi_app", String::new()),
        (true, None) => ("asgi_app", String::new()),
        (true, Some(l)) => ("asgi_app", format!("    asgi_event_loop {l};\n")),
    };
    // nginx's default body buffer (two pages, 8 KiB here) sends every larger request body
    // through a temp file, which costs a 16 KiB POST more than the app does (2.5 times the
    // requests per second with 64k); over HTTP/1.x nginx allocates it only up to the body's
    // announced length.
    let conf = format!(
        "load_module {module};\n{main}daemon off;\nworker_processes {workers};\nerror_log stderr info;\n\
         pid {pid};\nevents {{ worker_connections 1024; }}\n\
         http {{\n    access_log /dev/stdout;\n    client_body_buffer_size 128k;\n    wsgi_max_threads {threads};\n{home}{event_loop}    server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n            {directive} {app};\n        }}\n    }}\n}}\n",
        module = quoted(&module.display().to_string())?,
        workers = opts.workers,
        pid = quoted(&prefix.join("nginx.pid").display().to_string())?,
        threads = opts.threads.max(1),
        listen = quoted(&listen_address(&opts.host, opts.port))?,
        app = quoted(&app)?,
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    eprintln!(
        "ngx-wsgi: serving {app} on http://{}:{}/ (Ctrl-C stops)",
        opts.host, opts.port
    );
    let mut nginx = Command::new(nginx_path());
    nginx.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
    let watched = match (opts.reload, is_file) {
        (false, _) => None,
        (true, true) => Some(
            Path::new(&target)
                .parent()
                .unwrap_or(Path::new("."))
                .to_owned(),
        ),
        (true, false) => Some(std::env::current_dir().map_err(|e| e.to_string())?),
    };
    let served = supervise(nginx, watched.as_deref());
    match &served {
        // The prefix is this run's alone (its configuration, pid file and temp directories).
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&prefix);
        }
        Err(_) => eprintln!(
            "ngx-wsgi: nginx's configuration is kept in {}",
            conf_path.display()
        ),
    }
    served
}

/// `env NAME;` for every variable of this environment: the app sees the environment it was
/// served from (PATH, DATABASE_URL, ...), as under uvicorn or gunicorn, where nginx gives its
/// workers only the variables `env` names. NGINX is nginx's own (inherited sockets), and names
/// nginx could not read are left out.
fn passed_environment(own: &[&str]) -> String {
    let mut lines = String::new();
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain && name != "NGINX" && !own.contains(&name) {
            lines.push_str(&format!("env {name};\n"));
        }
    }
    lines
}

/// A fresh directory only this user can write (random name, made atomically: no race with
/// another user's link), that nginx's workers may traverse to their temp directories.
fn private_dir() -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let template = std::env::temp_dir().join("ngx-wsgi-serve-XXXXXX");
    let mut bytes = template.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: a writable NUL-terminated template, as mkdtemp wants; it writes the name in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(format!(
            "cannot make a directory in {}: {}",
            std::env::temp_dir().display(),
            std::io::Error::last_os_error()
        ));
    }
    bytes.pop();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A value as one nginx configuration token: double-quoted, its quotes and backslashes escaped;
/// control characters (a newline could end the directive) are refused.
fn quoted(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?}: control characters are not allowed"));
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// `host:port` for `listen`, IPv6 addresses in brackets.
fn listen_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn uid_of(name: &str) -> Result<u32, String> {
    let c =
        std::ffi::CString::new(name).map_err(|_| format!("--user {name:?}: not a user name"))?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(format!("--user {name}: no such user"));
    }
    // SAFETY: non-NULL record from getpwnam.
    Ok(unsafe { (*pw).pw_uid })
}

/// The signals received and not yet handed on to nginx, one bit each.
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    RECEIVED.fetch_or(1 << signal, std::sync::atomic::Ordering::SeqCst);
}

/// The signals a user or a process manager sends to what it started, which nginx's master acts
/// on in the foreground: SIGTERM (a container's or a service's stop) is handed on as SIGQUIT,
/// nginx's graceful stop, so that requests in flight end; the others as they are (SIGINT, a
/// terminal's Ctrl-C, reaches nginx too, as one of its process group; SIGHUP reloads, SIGUSR1
/// reopens the logs).
const HANDED_ON: [(libc::c_int, libc::c_int); 5] = [
    (libc::SIGTERM, libc::SIGQUIT),
    (libc::SIGINT, libc::SIGINT),
    (libc::SIGQUIT, libc::SIGQUIT),
    (libc::SIGHUP, libc::SIGHUP),
    (libc::SIGUSR1, libc::SIGUSR1),
];

/// Runs nginx as a child until it exits (so that its private prefix can be removed after it),
/// handing on the signals nginx acts on; with `watched`, reloads it when a `.py` under that
/// directory changes.
fn supervise(mut nginx: Command, watched: Option<&Path>) -> Result<(), String> {
    // SAFETY: the handler only updates an atomic, which is async-signal-safe; SIGCHLD's default
    // (an ignored one, inherited, would have the kernel reap nginx before waitpid sees it).
    unsafe {
        for (signal, _) in HANDED_ON {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid only set and read attributes of the child between fork and
    // exec (async-signal-safe calls).
    unsafe {
        // nginx stops (fast) if this process is killed, rather than serve on unsupervised; one
        // killed before the child could ask for that leaves it nothing to serve for.
        nginx.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                // No allocation between fork and exec.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = nginx
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nginx_path().display()))?;
    let pid = child.id() as libc::pid_t;
    let mut seen = watched.map(fingerprint);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(status) = reap(pid)? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("nginx exited: {status}"))
            };
        }
        let received = RECEIVED.swap(0, std::sync::atomic::Ordering::SeqCst);
        for (signal, to_nginx) in HANDED_ON {
            if received & (1 << signal) != 0 {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, to_nginx) };
            }
        }
        if let (Some(dir), Some(seen)) = (watched, seen.as_mut()) {
            let now = fingerprint(dir);
            if now != *seen {
                *seen = now;
                eprintln!(
                    "ngx-wsgi: a .py file under {} changed; reloading",
                    dir.display()
                );
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGHUP) };
            }
        }
    }
}

/// Waits for every child that has ended (not only nginx: as a container's first process,
/// this one inherits the orphans of the app's children, which nobody else reaps); nginx's
/// status once it has.
fn reap(nginx: libc::pid_t) -> Result<Option<std::process::ExitStatus>, String> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a live c_int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == nginx {
            return Ok(Some(std::process::ExitStatus::from_raw(status)));
        }
        if pid > 0 {
            continue;
        }
        if pid == 0 {
            return Ok(None);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(format!("waiting for nginx: {err}"));
    }
}

/// The newest modification time and the number of `.py` (and `.wsgi`) files under `dir`
/// (hidden directories, `__pycache__` and virtualenvs skipped).
fn fingerprint(dir: &Path) -> (std::time::SystemTime, usize) {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !name.starts_with('.')
                    && name != "__pycache__"
                    && !path.join("pyvenv.cfg").exists()
                {
                    stack.push(path);
                }
            } else if name.ends_with(".py") || name.ends_with(".wsgi") {
                count += 1;
                if let Ok(m) = meta.modified() {
                    newest = newest.max(m);
                }
            }
        }
    }
    (newest, count)
}

fn user_and_group(uid: u32) -> Option<(String, String)> {
    // SAFETY: getpwuid/getgrgid return NULL or pointers to static records read at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return None;
        }
        let user = std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned();
        let gr = libc::getgrgid((*pw).pw_gid);
        let group = if gr.is_null() {
            user.clone()
        } else {
            std::ffi::CStr::from_ptr((*gr).gr_name)
                .to_string_lossy()
                .into_owned()
        };
        Some((user, group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_single_quoted_tokens() {
        assert_eq!(quoted("/srv/my app.py").unwrap(), "\"/srv/my app.py\"");
        assert_eq!(
            quoted("/x\";daemon on;#").unwrap(),
            "\"/x\\\";daemon on;#\""
        );
        assert_eq!(quoted("a\\b").unwrap(), "\"a\\\\b\"");
        assert!(quoted("/x\nuser root;").is_err());
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(listen_address("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(listen_address("::1", 8080), "[::1]:8080");
        assert_eq!(listen_address("[::1]", 8080), "[::1]:8080");
    }

    #[test]
    fn private_dirs_are_fresh_and_closed_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let a = private_dir().unwrap();
        let b = private_dir().unwrap();
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711);
        std::fs::remove_dir(a).unwrap();
        std::fs::remove_dir(b).unwrap();
    }
}
