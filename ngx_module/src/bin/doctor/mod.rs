//! `ngx-wsgi doctor`: whether an nginx binary will load a module file, which Python the module
//! embeds, and whether the workers' user can use that Python and a given `wsgi_python_home`.
//!
//! nginx's `ngx_add_module` compares two fields of each loaded module's `ngx_module_t` with its
//! own: `version` (`nginx_version`, e.g. 1026003) and `signature` (`NGX_MODULE_SIGNATURE`: the
//! sizes of a pointer, `sig_atomic_t` and `time_t`, then 34 flags of the build's configuration).
//! Both are read from the files: the first entry of each file's exported `ngx_modules` array.

mod access;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::elf::Elf;
use access::User;

/// What each flag of the signature after the three sizes stands for (ngx_module.h).
const SIGNATURE_FLAGS: [&str; 34] = [
    "NGX_HAVE_KQUEUE",
    "NGX_HAVE_IOCP",
    "NGX_HAVE_FILE_AIO or --with-compat",
    "NGX_HAVE_SENDFILE_NODISKIO or --with-compat",
    "NGX_HAVE_EVENTFD",
    "NGX_HAVE_EPOLL",
    "NGX_HAVE_KEEPALIVE_TUNABLE",
    "NGX_HAVE_INET6",
    "always 1",
    "always 1",
    "NGX_HAVE_DEFERRED_ACCEPT with SO_ACCEPTFILTER",
    "always 1",
    "NGX_HAVE_SETFIB",
    "NGX_HAVE_TCP_FASTOPEN",
    "NGX_HAVE_UNIX_DOMAIN",
    "NGX_HAVE_VARIADIC_MACROS",
    "always 0",
    "NGX_QUIC (--with-http_v3_module) or --with-compat",
    "NGX_HAVE_OPENAT",
    "NGX_HAVE_ATOMIC_OPS",
    "NGX_HAVE_POSIX_SEM",
    "NGX_THREADS (--with-threads) or --with-compat",
    "NGX_PCRE",
    "NGX_HTTP_SSL (--with-http_ssl_module) or --with-compat",
    "always 1",
    "NGX_HTTP_GZIP",
    "always 1",
    "NGX_HTTP_X_FORWARDED_FOR",
    "NGX_HTTP_REALIP (--with-http_realip_module)",
    "NGX_HTTP_HEADERS",
    "NGX_HTTP_DAV (--with-http_dav_module)",
    "NGX_HTTP_CACHE",
    "NGX_HTTP_UPSTREAM_ZONE",
    "NGX_COMPAT (--with-compat)",
];

pub struct Defaults {
    pub nginx: PathBuf,
    pub module: PathBuf,
}

struct Options {
    nginx: PathBuf,
    module: PathBuf,
    home: Option<(PathBuf, &'static str)>,
    user: Option<String>,
}

/// The usage line of this subcommand.
pub const USAGE: &str =
    "ngx-wsgi doctor [--nginx PATH] [--module PATH] [--python-home DIR] [--user NAME]";

pub fn main(args: &[String], defaults: Defaults) -> ExitCode {
    let opts = match parse(args, defaults) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ngx-wsgi doctor: {e}\nusage: {USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::default();
    check(&opts, &mut report);
    if report.problems == 0 {
        line("", "no problem found");
        ExitCode::SUCCESS
    } else {
        let plural = if report.problems == 1 { "" } else { "s" };
        line("", &format!("{} problem{plural} found", report.problems));
        ExitCode::FAILURE
    }
}

fn parse(args: &[String], defaults: Defaults) -> Result<Options, String> {
    // The default paths are absolute; under the current directory (a checkout) they read better
    // relative to it.
    let cwd = std::env::current_dir().unwrap_or_default();
    let shown = |p: PathBuf| p.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(p);
    let mut opts = Options {
        nginx: shown(defaults.nginx),
        module: shown(defaults.module),
        home: std::env::var_os("VIRTUAL_ENV").map(|v| (PathBuf::from(v), "VIRTUAL_ENV")),
        user: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--nginx" => opts.nginx = value("--nginx")?.into(),
            "--module" => opts.module = value("--module")?.into(),
            "--python-home" => opts.home = Some((value("--python-home")?.into(), "--python-home")),
            "--user" => opts.user = Some(value("--user")?),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    Ok(opts)
}

#[derive(Default)]
struct Report {
    problems: usize,
}

/// One line of the report; a closed stdout (`| head`) just ends the output.
fn line(label: &str, text: &str) {
    use std::io::Write;
    let _ = if label.is_empty() {
        writeln!(std::io::stdout(), "{text}")
    } else {
        writeln!(std::io::stdout(), "{label:<8}{text}")
    };
}

impl Report {
    fn info(&self, what: &str, text: impl AsRef<str>) {
        line(what, text.as_ref());
    }
    fn ok(&self, text: impl AsRef<str>) {
        line("ok", text.as_ref());
    }
    fn problem(&mut self, text: impl AsRef<str>) {
        self.problems += 1;
        line("PROBLEM", text.as_ref());
    }
}

/// `nginx_version` (e.g. 1026003) as nginx prints it.
fn version_text(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

/// `version` and `signature` of the first module in the file's `ngx_modules`.
fn module_identity(elf: &Elf) -> Option<(u64, String)> {
    let modules = elf.dynamic_symbol("ngx_modules")?;
    let first = elf.pointer_at(modules)?;
    // ngx_module_t: ctx_index, index, name, spare0, spare1, version, signature.
    let version = elf.u64_at(first + 5 * 8)?;
    let signature = elf.string_at(elf.pointer_at(first + 6 * 8)?)?;
    Some((version, signature))
}

fn check(opts: &Options, report: &mut Report) {
    let nginx_elf = Elf::open(&opts.nginx).ok();
    let nginx = identify(&opts.nginx, "nginx", report);
    let module_elf = match Elf::open(&opts.module) {
        Ok(e) => Some(e),
        Err(e) => {
            report.problem(format!("module  {e}"));
            None
        }
    };
    let module = module_elf.as_ref().and_then(|elf| {
        let id = module_identity(elf);
        match &id {
            Some((v, s)) => report.info(
                "module",
                format!(
                    "{}: built for nginx {}, signature {s}",
                    opts.module.display(),
                    version_text(*v)
                ),
            ),
            None => report.problem(format!(
                "{} has no ngx_modules table: it is not an nginx dynamic module",
                opts.module.display()
            )),
        }
        id
    });
    if let (Some((nv, ns)), Some((mv, ms)), Some(nginx_elf), Some(module_elf)) =
        (&nginx, &module, &nginx_elf, &module_elf)
    {
        if nv != mv || !missing_symbols(opts, nginx_elf, module_elf, report) {
            compare(opts, (*nv, ns), (*mv, ms), report);
        }
    }

    let user = workers_user(opts, report);
    let Some(elf) = module_elf else { return };
    let Some(python) = embedded_python(elf, &opts.module, report) else {
        return;
    };
    if let Some(user) = &user {
        python_access(&python, user, report);
    }
    if let Some((home, from)) = &opts.home {
        check_home(home, from, &python, user.as_ref(), report);
    }
}

fn identify(path: &Path, what: &str, report: &mut Report) -> Option<(u64, String)> {
    let elf = match Elf::open(path) {
        Ok(e) => e,
        Err(e) => {
            report.problem(format!("{what}   {e}"));
            return None;
        }
    };
    match module_identity(&elf) {
        Some((v, s)) => {
            report.info(
                what,
                format!(
                    "{}: nginx {}, signature {s}",
                    path.display(),
                    version_text(v)
                ),
            );
            Some((v, s))
        }
        None => {
            report.problem(format!(
                "{} exports no ngx_modules table: not an nginx binary that loads dynamic modules",
                path.display()
            ));
            None
        }
    }
}

/// nginx's dlopen() of the module fails, before any version or signature check, when the module
/// uses nginx functions or variables that this nginx binary does not export (a module compiled
/// with threads, say, for an nginx configured without them).
fn missing_symbols(opts: &Options, nginx: &Elf, module: &Elf, report: &mut Report) -> bool {
    let exported: std::collections::HashSet<String> =
        nginx.dynamic_symbols(true).into_iter().collect();
    let mut missing: Vec<String> = module
        .dynamic_symbols(false)
        .into_iter()
        .filter(|s| s.starts_with("ngx_") && !exported.contains(s))
        .collect();
    if missing.is_empty() {
        return false;
    }
    missing.sort();
    report.problem(format!(
        "nginx refuses it: dlopen() \"{}\" fails (undefined symbol: {}): this nginx was \
         configured without what the module was built with (--with-threads, --with-compat: \
         nginx -V); build the module against this nginx's configured tree (NGINX_BUILD_DIR)",
        opts.module.display(),
        missing.join(", ")
    ));
    true
}

fn compare(opts: &Options, nginx: (u64, &str), module: (u64, &str), report: &mut Report) {
    let file = opts.module.display();
    if nginx.0 != module.0 {
        report.problem(format!(
            "nginx refuses it: \"module \"{file}\" version {} instead of {}\": the module was built \
             for nginx {}, this is nginx {}; build it against this nginx's configured tree \
             (NGINX_BUILD_DIR, see README) or install the package made for it",
            module.0,
            nginx.0,
            version_text(module.0),
            version_text(nginx.0)
        ));
        return;
    }
    if nginx.1 == module.1 {
        report.ok("nginx loads this module: same version and build signature");
        return;
    }
    let mut differences = Vec::new();
    let (n, m): (Vec<&str>, Vec<&str>) = (
        nginx.1.splitn(4, ',').collect(),
        module.1.splitn(4, ',').collect(),
    );
    for (i, name) in ["pointer size", "sig_atomic_t size", "time_t size"]
        .iter()
        .enumerate()
    {
        if n.get(i) != m.get(i) {
            differences.push(format!(
                "{name}: nginx {}, module {}",
                n.get(i).unwrap_or(&"?"),
                m.get(i).unwrap_or(&"?")
            ));
        }
    }
    let (nf, mf) = (n.get(3).unwrap_or(&""), m.get(3).unwrap_or(&""));
    for (i, (a, b)) in nf.chars().zip(mf.chars()).enumerate() {
        if a != b {
            let name = SIGNATURE_FLAGS.get(i).unwrap_or(&"unknown flag");
            differences.push(format!("flag {} ({name}): nginx {a}, module {b}", i + 1));
        }
    }
    if nf.len() != mf.len() {
        differences.push(format!(
            "{} flags in nginx's, {} in the module's",
            nf.len(),
            mf.len()
        ));
    }
    report.problem(format!(
        "nginx refuses it: \"module \"{file}\" is not binary compatible\": same nginx version, \
         other build configuration ({}); configure nginx's source with this nginx's own arguments \
         (nginx -V; --with-compat) and build against that tree (NGINX_BUILD_DIR)",
        differences.join("; ")
    ));
}

/// The workers' user: --user, else the `user` directive of nginx's default configuration file,
/// else the user nginx was configured with, else nginx's default, nobody.
fn workers_user(opts: &Options, report: &mut Report) -> Option<User> {
    let (name, from) = match &opts.user {
        Some(u) => (u.clone(), "--user".to_owned()),
        None => default_user(&opts.nginx),
    };
    match User::by_name(&name) {
        Some(u) => {
            report.info("user", format!("the workers run as {name} ({from})"));
            Some(u)
        }
        None => {
            report.problem(format!("the workers' user {name} ({from}) does not exist"));
            None
        }
    }
}

fn default_user(nginx: &Path) -> (String, String) {
    let configure = Command::new(nginx)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let arg = |name: &str| {
        configure
            .split_whitespace()
            .find_map(|a| a.strip_prefix(name).map(str::to_owned))
    };
    if let Some(conf) = arg("--conf-path=") {
        if let Ok(text) = std::fs::read_to_string(&conf) {
            let directive = text.lines().find_map(|l| {
                let l = l.trim();
                l.strip_prefix("user")
                    .filter(|rest| rest.starts_with([' ', '\t']))
                    .and_then(|rest| rest.split([' ', '\t', ';']).find(|w| !w.is_empty()))
                    .map(str::to_owned)
            });
            if let Some(user) = directive {
                return (user, format!("the user directive of {conf}"));
            }
        }
    }
    if let Some(user) = arg("--user=") {
        return (user, "nginx's --user".to_owned());
    }
    (
        "nobody".to_owned(),
        "nginx's default; give --user for another".to_owned(),
    )
}

struct Python {
    version: String,
    library: PathBuf,
    stdlib: PathBuf,
}

fn embedded_python(elf: Elf, module: &Path, report: &mut Report) -> Option<Python> {
    let Some((lib, version)) = elf.libpython() else {
        report.problem(format!("{} links no libpython", module.display()));
        return None;
    };
    let (_, runpath) = elf.needed_and_runpath();
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let origin = module.parent().unwrap_or(Path::new("."));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in runpath
        .iter()
        .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
        .chain(
            [multiarch.as_str(), "/lib", "/usr/lib", "/usr/local/lib"]
                .iter()
                .map(PathBuf::from),
        )
    {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let Some(library) = dirs.iter().map(|d| d.join(&lib)).find(|p| p.exists()) else {
        report.problem(format!(
            "the module embeds Python {version}, but {lib} is in none of {}: nginx's dlopen() of \
             the module fails (install that Python's shared library, or build the module against \
             an installed Python with PYO3_PYTHON)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return None;
    };
    let libdir = library.parent().unwrap_or(Path::new("/"));
    let stdlib = [
        libdir.join(format!("python{version}")),
        libdir.join(format!("../lib/python{version}")),
        PathBuf::from(format!("/usr/lib/python{version}")),
    ]
    .into_iter()
    .find(|p| p.join("os.py").exists())
    .map(|p| p.canonicalize().unwrap_or(p));
    let Some(stdlib) = stdlib else {
        report.problem(format!(
            "the module embeds Python {version} ({}), but its standard library (os.py) is not \
             beside it",
            library.display()
        ));
        return None;
    };
    report.info(
        "python",
        format!(
            "the module embeds Python {version}: {}, standard library {}",
            library.display(),
            stdlib.display()
        ),
    );
    Some(Python {
        version,
        library,
        stdlib,
    })
}

fn python_access(python: &Python, user: &User, report: &mut Report) {
    let denied = [&python.library, &python.stdlib.join("os.py")]
        .into_iter()
        .find_map(|p| user.cannot_read(p));
    match denied {
        Some(why) => report.problem(format!(
            "{} cannot use the embedded Python: {why}",
            user.name
        )),
        None => report.ok(format!(
            "{} can read libpython{} and its standard library",
            user.name, python.version
        )),
    }
}

/// The standard library a virtualenv gets from its base installation (`home` in its
/// `pyvenv.cfg`, a `bin` directory), when that is laid out as a prefix.
fn venv_base_stdlib(home: &Path, version: &str) -> Option<PathBuf> {
    let cfg = std::fs::read_to_string(home.join("pyvenv.cfg")).ok()?;
    let base = cfg.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "home").then(|| PathBuf::from(v.trim()))
    })?;
    let stdlib = base.parent()?.join(format!("lib/python{version}"));
    stdlib.join("os.py").exists().then_some(stdlib)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

/// The `major.minor` of a `wsgi_python_home`: pyvenv.cfg's `version` (or `version_info`), else
/// the `lib/pythonX.Y` of a prefix.
fn home_version(home: &Path) -> Result<(String, PathBuf), String> {
    if let Ok(cfg) = std::fs::read_to_string(home.join("pyvenv.cfg")) {
        let version = cfg.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            matches!(k.trim(), "version" | "version_info").then(|| v.trim().to_owned())
        });
        let version = version.ok_or("its pyvenv.cfg names no version")?;
        let major_minor = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        return Ok((major_minor, home.join("pyvenv.cfg")));
    }
    let lib = std::fs::read_dir(home.join("lib")).map_err(|e| {
        format!(
            "neither {}/pyvenv.cfg nor {}/lib can be read: {e}",
            home.display(),
            home.display()
        )
    })?;
    lib.flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("python")?;
            (e.path().join("os.py").exists()).then(|| (v.to_owned(), e.path()))
        })
        .ok_or_else(|| {
            format!(
                "{} is neither a virtualenv nor a Python prefix",
                home.display()
            )
        })
}

fn check_home(home: &Path, from: &str, python: &Python, user: Option<&User>, report: &mut Report) {
    let (version, evidence) = match home_version(home) {
        Ok(v) => v,
        Err(e) => {
            report.problem(format!("wsgi_python_home {} ({from}): {e}", home.display()));
            return;
        }
    };
    if version != python.version {
        report.problem(format!(
            "wsgi_python_home {} is Python {version}; this module embeds Python {} (nginx -t \
             refuses it): make the virtualenv with Python {}, or build the module for Python \
             {version} (PYO3_PYTHON)",
            home.display(),
            python.version,
            python.version
        ));
        return;
    }
    if let Some(other) = venv_base_stdlib(home, &version).filter(|s| !same_dir(s, &python.stdlib)) {
        report.problem(format!(
            "wsgi_python_home {} is a virtualenv of another Python {version} installation, whose \
             standard library is {} (nginx -t refuses it): its C extensions do not load in the \
             embedded one's; make the virtualenv with the python of {}",
            home.display(),
            other.display(),
            python.stdlib.display()
        ));
        return;
    }
    report.info(
        "home",
        format!(
            "wsgi_python_home {} ({from}): Python {version} ({})",
            home.display(),
            evidence.display()
        ),
    );
    let Some(user) = user else { return };
    let site = home.join(format!("lib/python{version}/site-packages"));
    let needed = if site.is_dir() { site } else { evidence };
    match user.cannot_read(&needed) {
        Some(why) => report.problem(format!(
            "{} cannot use wsgi_python_home {}: {why}",
            user.name,
            home.display()
        )),
        None => report.ok(format!("{} can read {}", user.name, needed.display())),
    }
}
