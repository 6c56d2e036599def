//! `ngx-wsgi`: prints where the built module and nginx are, and serves one app through them.
//!
//! ```text
//! ngx-wsgi paths
//! ngx-wsgi serve APP.py[:CALLABLE] [--host 127.0.0.1] [--port 8080] [--workers 1] [--threads 32]
//! ```

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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
        "usage:\n  ngx-wsgi paths\n  ngx-wsgi serve APP.py[:CALLABLE] [--host 127.0.0.1] [--port 8080] [--workers 1] [--threads 32]"
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
        _ => usage(),
    }
}

struct ServeOptions {
    app: String,
    host: String,
    port: u16,
    workers: u32,
    threads: u32,
}

fn parse_serve(args: &[String]) -> Result<ServeOptions, String> {
    let mut opts = ServeOptions {
        app: String::new(),
        host: "127.0.0.1".into(),
        port: 8080,
        workers: 1,
        threads: 32,
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
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a if opts.app.is_empty() => opts.app = a.to_owned(),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    if opts.app.is_empty() {
        return Err("which app? give APP.py[:CALLABLE] or module[:CALLABLE]".into());
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
    let target = if target.ends_with(".py") {
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
    let prefix = std::env::temp_dir().join(format!("ngx-wsgi-serve-{}", std::process::id()));
    std::fs::create_dir_all(prefix.join("logs"))
        .map_err(|e| format!("{}: {e}", prefix.display()))?;
    let module = module_path();
    if !module.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release`",
            module.display()
        ));
    }
    let mut main = String::new();
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        // Root starts nginx, but the workers run as the owner of the app file.
        let owner = if target.ends_with(".py") {
            std::fs::metadata(&target).map(|m| m.uid()).unwrap_or(0)
        } else {
            0
        };
        if let Some((user, group)) = user_and_group(owner) {
            main.push_str(&format!("user {user} {group};\n"));
        }
    }
    let home = std::env::var("VIRTUAL_ENV")
        .map(|v| format!("    wsgi_python_home {v};\n"))
        .unwrap_or_default();
    let conf = format!(
        "load_module {module};\n{main}daemon off;\nworker_processes {workers};\nerror_log stderr info;\n\
         pid {prefix}/nginx.pid;\nevents {{ worker_connections 1024; }}\nthread_pool default threads={threads};\n\
         http {{\n    access_log /dev/stdout;\n{home}    server {{\n        listen {host}:{port};\n\
         \x20       location / {{\n            wsgi_app {app};\n        }}\n    }}\n}}\n",
        module = module.display(),
        workers = opts.workers,
        prefix = prefix.display(),
        threads = opts.threads,
        host = opts.host,
        port = opts.port,
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    eprintln!(
        "ngx-wsgi: serving {app} on http://{}:{}/ (Ctrl-C stops)",
        opts.host, opts.port
    );
    let err = Command::new(nginx_path())
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .exec();
    Err(format!("cannot run {}: {err}", nginx_path().display()))
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
