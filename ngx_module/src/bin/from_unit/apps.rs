//! Unit's Python applications: what each one runs and the process settings around it.

use std::path::Path;

use super::json::{At, BadInput, Read};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    Wsgi,
    Asgi,
}

/// One entry point: the application itself, or one of its `targets`.
#[derive(Debug)]
pub struct Entry {
    pub module: String,
    pub callable: String,
    /// `prefix`: `SCRIPT_NAME` (ASGI `root_path`), without its trailing slash.
    pub prefix: Option<String>,
    /// A `factory` callable: there is no equivalent, the entry is not served.
    pub factory: bool,
}

#[derive(Debug)]
pub struct App {
    pub name: String,
    /// `applications/NAME`.
    pub at: String,
    /// A `python` type; others are not translated.
    pub python: bool,
    /// The version a `python` type names (`"3.11"` of `python 3.11` or `python3.11`), if any.
    pub python_version: Option<String>,
    pub home: Option<String>,
    pub sys_path: Vec<String>,
    pub working_directory: Option<String>,
    pub environment: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Static process count, or the dynamic `max`.
    pub processes: Option<u64>,
    pub threads: Option<u64>,
    /// `limits/timeout`, seconds.
    pub timeout: Option<u64>,
    /// `limits/requests`.
    pub requests: Option<u64>,
    pub protocol: Protocol,
    /// How the protocol was chosen, for the output's comment; `None` when it was given.
    pub protocol_source: Option<String>,
    /// The application's own entry (no `targets`) under "", or its targets by name.
    pub entries: Vec<(String, Entry)>,
    /// What of this application has no equivalent: (path, reason).
    pub untranslated: Vec<(String, String)>,
}

impl App {
    pub fn entry(&self, target: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|(n, _)| n == target)
            .map(|(_, e)| e)
    }
}

fn untranslated(app: &mut App, at: &At<'_>, reason: &str) {
    app.untranslated
        .push((at.path().to_owned(), reason.to_owned()));
}

/// A path as Unit takes it: relative ones from the application's working directory.
fn resolve(path: &str, working_directory: Option<&str>) -> String {
    match working_directory {
        Some(dir) if !Path::new(path).is_absolute() => {
            Path::new(dir).join(path).display().to_string()
        }
        _ => path.to_owned(),
    }
}

fn entry(at: &At<'_>) -> Read<Entry> {
    let module = at.required("module")?.str()?.to_owned();
    if module.is_empty() || !module.split('.').all(is_identifier) {
        return Err(BadInput(format!(
            "{}/module: {module:?} is not a Python module name",
            at.path()
        )));
    }
    let callable = match at.get("callable") {
        Some(c) => c.str()?.to_owned(),
        None => "application".to_owned(),
    };
    if !is_identifier(&callable) {
        return Err(BadInput(format!(
            "{}/callable: {callable:?} is not a Python name",
            at.path()
        )));
    }
    let prefix = match at.get("prefix") {
        Some(p) => {
            let text = p.str()?;
            if !text.is_empty() && !text.starts_with('/') {
                return Err(p.wrong("a path that starts with \"/\""));
            }
            Some(text.trim_end_matches('/').to_owned()).filter(|t| !t.is_empty())
        }
        None => None,
    };
    let factory = match at.get("factory") {
        Some(f) => f.bool()?,
        None => false,
    };
    Ok(Entry {
        module,
        callable,
        prefix,
        factory,
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

const ENTRY_OPTIONS: &[&str] = &["module", "callable", "prefix", "factory"];

/// The version a `python` type asks for ("" for any), `None` for another language: as Unit's
/// nxt_app_lang_module reads a type, the language ends at the first space or digit.
pub fn python_type(type_text: &str) -> Option<&str> {
    let end = type_text
        .find(|c: char| c == ' ' || c.is_ascii_digit())
        .unwrap_or(type_text.len());
    if &type_text[..end] != "python" {
        return None;
    }
    let rest = &type_text[end..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Why a version named by a `python` type deserves a look here, given the Python the module
/// embeds (major, minor) when the tool could read it.
pub fn version_note(version: &str, embedded: Option<(u32, u32)>) -> Option<String> {
    let mut parts = version.split('.');
    let major = parts.next().filter(|m| !m.is_empty())?;
    let minor = parts.next();
    let embeds = embedded
        .map(|(a, b)| format!("Python {a}.{b}"))
        .unwrap_or_else(|| "the Python 3 it was built for (`ngx-wsgi doctor` names it)".into());
    if major == "2" {
        return Some(format!("Unit ran it on Python {version}; the module runs {embeds}: the app must run on Python 3"));
    }
    let minor = minor?;
    match embedded {
        Some((a, b)) if a.to_string() == major && b.to_string() == minor => None,
        Some(_) => Some(format!("Unit ran it on Python {version}; the module runs {embeds}: check that the app and its packages run on it (a `home` virtualenv of another version fails `nginx -t`), or build the module for Python {major}.{minor} (see Python versions in the README)")),
        None => Some(format!("Unit ran it on Python {version}; the module runs {embeds}: check that this is {major}.{minor}, or that the app and its packages run on the one it is")),
    }
}

/// A count Unit refuses below 1 (`processes`, its `max`, `threads`), where nginx's
/// directives would fail too.
fn from_one(at: &At<'_>) -> Read<u64> {
    match at.count().map_err(|_| at.wrong("a whole number from 1"))? {
        0 => Err(at.wrong("a whole number from 1 (Unit refuses 0)")),
        n => Ok(n),
    }
}

/// Reads `applications/NAME`.
pub fn read(name: &str, at: At<'_>) -> Read<App> {
    let type_text = at.required("type")?.str()?;
    let version = python_type(type_text);
    let mut app = App {
        name: name.to_owned(),
        at: at.path().to_owned(),
        python: version.is_some(),
        python_version: version.filter(|v| !v.is_empty()).map(str::to_owned),
        home: None,
        sys_path: Vec::new(),
        working_directory: None,
        environment: Vec::new(),
        user: None,
        group: None,
        processes: None,
        threads: None,
        timeout: None,
        requests: None,
        protocol: Protocol::Wsgi,
        protocol_source: None,
        entries: Vec::new(),
        untranslated: Vec::new(),
    };
    if !app.python {
        let reason = format!(
            "a \"{type_text}\" application: nginx with this module runs Python applications only"
        );
        app.untranslated.push((app.at.clone(), reason));
        return Ok(app);
    }
    if let Some(wd) = at.get("working_directory") {
        app.working_directory = Some(wd.str()?.to_owned());
    }
    let wd = app.working_directory.clone();
    let mut protocol = None;
    for (key, value) in at.members()? {
        match key {
            "type" | "working_directory" | "targets" => {}
            "module" | "callable" | "prefix" | "factory" if at.get("targets").is_some() => {
                return Err(BadInput(format!(
                    "{}: an application with \"targets\" has no \"{key}\" of its own",
                    value.path()
                )))
            }
            "module" | "callable" | "prefix" | "factory" => {}
            "home" => app.home = Some(resolve(value.str()?, wd.as_deref())),
            "path" => {
                for (p, _) in value.strings()? {
                    app.sys_path.push(resolve(&p, wd.as_deref()));
                }
            }
            "protocol" => {
                protocol = Some(match value.str()? {
                    "wsgi" => Protocol::Wsgi,
                    "asgi" => Protocol::Asgi,
                    _ => return Err(value.wrong("\"wsgi\" or \"asgi\"")),
                })
            }
            "environment" => {
                for (k, v) in value.members()? {
                    app.environment.push((k.to_owned(), v.str()?.to_owned()));
                }
            }
            "user" => app.user = Some(value.str()?.to_owned()),
            "group" => app.group = Some(value.str()?.to_owned()),
            "processes" => match value.value {
                serde_json::Value::Object(_) => {
                    for (k, v) in value.members()? {
                        match k {
                            "max" => app.processes = Some(from_one(&v)?),
                            "spare" | "idle_timeout" => {
                                v.count()?;
                                untranslated(&mut app, &v, "nginx runs a fixed number of worker processes (worker_processes), each serving every application; it keeps no spare processes and stops none when idle");
                            }
                            _ => untranslated(&mut app, &v, "an option unknown to this tool"),
                        }
                    }
                    // Unit's dynamic default: up to 1 process.
                    app.processes.get_or_insert(1);
                }
                _ => app.processes = Some(from_one(&value)?),
            },
            "threads" => app.threads = Some(from_one(&value)?),
            "thread_stack_size" => {
                value.count()?;
                untranslated(&mut app, &value, "the module's threads have the system's default stack size");
            }
            "limits" => {
                for (k, v) in value.members()? {
                    match k {
                        // 0, Unit's default for both, is no limit.
                        "timeout" => app.timeout = Some(v.count()?).filter(|&n| n > 0),
                        "requests" => app.requests = Some(v.count()?).filter(|&n| n > 0),
                        _ => untranslated(&mut app, &v, "an option unknown to this tool"),
                    }
                }
            }
            "isolation" => untranslated(&mut app, &value, "nginx's workers run in nginx's own namespaces, cgroup and root: run nginx itself in the isolation you need (systemd's sandboxing options, a container)"),
            "stdout" | "stderr" => untranslated(&mut app, &value, "an nginx worker's standard error goes to nginx's error log and its standard output is nginx's; the app's print()s and raw writes go there"),
            _ => untranslated(&mut app, &value, "an option unknown to this tool"),
        }
    }
    match at.get("targets") {
        Some(targets) => {
            for (target, t) in targets.members()? {
                for (k, v) in t.members()? {
                    if !ENTRY_OPTIONS.contains(&k) {
                        untranslated(&mut app, &v, "an option unknown to this tool");
                    }
                }
                app.entries.push((target.to_owned(), entry(&t)?));
            }
            if app.entries.is_empty() {
                return Err(targets.wrong("at least one target"));
            }
        }
        None => app.entries.push((String::new(), entry(&at)?)),
    }
    for (target, e) in &app.entries {
        if e.factory {
            let path = if target.is_empty() {
                format!("{}/factory", app.at)
            } else {
                format!("{}/targets/{target}/factory", app.at)
            };
            app.untranslated.push((path, format!("the module calls {}, it does not call a factory: add `application = {}()` to {} and name that callable; this entry answers 502 until then", e.callable, e.callable, e.module)));
        }
    }
    match protocol {
        Some(p) => app.protocol = p,
        None => {
            let (entry_name, first) = &app.entries[0];
            let _ = entry_name;
            let mut dirs = app.sys_path.clone();
            dirs.extend(app.working_directory.clone());
            match detect_protocol(&dirs, &first.module, &first.callable) {
                Some((p, why)) => {
                    app.protocol = p;
                    app.protocol_source = Some(why);
                }
                None => {
                    let reason = format!("no \"protocol\": Unit tells WSGI from ASGI when it loads {}:{}; this tool could not tell from the source, so it wrote wsgi_app: if the app is ASGI, write asgi_app (or set \"protocol\": \"asgi\" and run the tool again)", first.module, first.callable);
                    app.untranslated
                        .push((format!("{}/protocol", app.at), reason));
                }
            }
        }
    }
    Ok(app)
}

/// Reads the module's source, where the directories list it, and tells the protocol from how
/// its callable is made: `async def`, or a framework's ASGI or WSGI constructor.
fn detect_protocol(dirs: &[String], module: &str, callable: &str) -> Option<(Protocol, String)> {
    let relative = module.replace('.', "/");
    let candidates = dirs.iter().flat_map(|d| {
        [
            Path::new(d).join(format!("{relative}.py")),
            Path::new(d).join(&relative).join("__init__.py"),
        ]
    });
    for file in candidates {
        let Ok(source) = std::fs::read_to_string(&file) else {
            continue;
        };
        let found = |p: Protocol, how: &str| Some((p, format!("{} in {}", how, file.display())));
        for line in source.lines() {
            let line = line.trim();
            if line.starts_with(&format!("async def {callable}(")) {
                return found(Protocol::Asgi, &format!("`async def {callable}`"));
            }
            if line.starts_with(&format!("def {callable}(")) {
                return found(Protocol::Wsgi, &format!("`def {callable}`"));
            }
            let Some(rhs) = line
                .strip_prefix(callable)
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('=').filter(|r| !r.starts_with('=')))
                .map(str::trim)
            else {
                continue;
            };
            const ASGI: &[&str] = &[
                "get_asgi_application(",
                "FastAPI(",
                "Starlette(",
                "Quart(",
                "Litestar(",
                "Sanic(",
                "ProtocolTypeRouter(",
                "Starlite(",
                "Responder(",
                "Datasette(",
            ];
            const WSGI: &[&str] = &[
                "get_wsgi_application(",
                "Flask(",
                "Bottle(",
                "falcon.App(",
                "falcon.API(",
                "Pyramid(",
                "make_wsgi_app(",
                "WSGIHandler(",
            ];
            let constructor = rhs.rsplit('.').next().unwrap_or(rhs);
            for (kinds, protocol) in [(ASGI, Protocol::Asgi), (WSGI, Protocol::Wsgi)] {
                if kinds
                    .iter()
                    .any(|k| rhs.starts_with(k) || constructor.starts_with(k))
                {
                    return found(protocol, &format!("`{callable} = {rhs}`"));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(json: &str) -> Read<App> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        read("a", At::root(&v))
    }

    #[test]
    fn an_application_reads_with_unit_defaults() {
        let a = app(r#"{"type": "python 3.11", "module": "wsgi", "protocol": "wsgi"}"#).unwrap();
        assert!(a.python);
        let e = a.entry("").unwrap();
        assert_eq!(
            (e.module.as_str(), e.callable.as_str()),
            ("wsgi", "application")
        );
        assert_eq!(e.prefix, None);
        assert!(a.untranslated.is_empty());
    }

    #[test]
    fn the_type_splits_at_the_first_space_or_digit() {
        assert_eq!(python_type("python"), Some(""));
        assert_eq!(python_type("python 3"), Some("3"));
        assert_eq!(python_type("python3"), Some("3"));
        assert_eq!(python_type("python3.11"), Some("3.11"));
        assert_eq!(python_type("python 3.11"), Some("3.11"));
        assert_eq!(python_type("python 2.7"), Some("2.7"));
        assert_eq!(python_type("php 8"), None);
        assert_eq!(python_type("pythonic"), None);
        assert_eq!(python_type("Python 3"), None);
    }

    #[test]
    fn a_version_is_noted_when_it_is_not_the_embedded_one() {
        assert_eq!(version_note("3", Some((3, 11))), None);
        assert_eq!(version_note("3", None), None);
        assert_eq!(version_note("3.11", Some((3, 11))), None);
        assert_eq!(version_note("3.11.4", Some((3, 11))), None);
        let other = version_note("3.12", Some((3, 11))).unwrap();
        assert!(
            other.contains("Python 3.11") && other.contains("3.12"),
            "{other}"
        );
        let unknown = version_note("3.12", None).unwrap();
        assert!(unknown.contains("ngx-wsgi doctor"), "{unknown}");
        assert!(version_note("2", Some((3, 11)))
            .unwrap()
            .contains("Python 3"));
    }

    #[test]
    fn relative_paths_start_at_the_working_directory() {
        let a = app(
            r#"{"type": "python", "module": "blog.wsgi", "protocol": "wsgi",
            "working_directory": "/www/apps", "path": ["blog", "/abs"], "home": ".venv"}"#,
        )
        .unwrap();
        assert_eq!(a.sys_path, ["/www/apps/blog", "/abs"]);
        assert_eq!(a.home.as_deref(), Some("/www/apps/.venv"));
    }

    #[test]
    fn process_settings_without_counterpart_are_listed() {
        let a = app(r#"{"type": "python", "module": "m", "protocol": "asgi",
            "processes": {"max": 4, "spare": 1, "idle_timeout": 120},
            "isolation": {"namespaces": {"pid": true}}, "limits": {"timeout": 10, "requests": 1000}}"#)
        .unwrap();
        assert_eq!(a.processes, Some(4));
        assert_eq!((a.timeout, a.requests), (Some(10), Some(1000)));
        let paths: Vec<_> = a.untranslated.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["processes/spare", "processes/idle_timeout", "isolation"]
        );
    }

    #[test]
    fn targets_have_their_own_module_callable_and_prefix() {
        let a = app(r#"{"type": "python", "protocol": "wsgi", "targets": {
            "front": {"module": "front.wsgi", "callable": "app", "prefix": "/front/"},
            "back": {"module": "back.wsgi"}}}"#)
        .unwrap();
        assert_eq!(a.entry("front").unwrap().prefix.as_deref(), Some("/front"));
        assert_eq!(a.entry("back").unwrap().callable, "application");
        assert!(a.entry("").is_none());
    }

    #[test]
    fn bad_values_are_refused_with_their_path() {
        let e = app(r#"{"type": "python", "module": "m", "protocol": "http"}"#).unwrap_err();
        assert_eq!(e.0, "protocol: expected \"wsgi\" or \"asgi\", got \"http\"");
        let e = app(r#"{"type": "python", "module": "my-app"}"#).unwrap_err();
        assert!(
            e.0.contains("module: \"my-app\" is not a Python module name"),
            "{}",
            e.0
        );
        let e = app(r#"{"type": "python"}"#).unwrap_err();
        assert!(e.0.contains("\"module\" is missing"), "{}", e.0);
        let e = app(r#"{"type": "python", "module": "m", "prefix": "api"}"#).unwrap_err();
        assert!(e.0.contains("prefix: expected a path"), "{}", e.0);
    }

    #[test]
    fn the_protocol_is_told_from_the_source() {
        let dir = std::env::temp_dir().join(format!("from-unit-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proj")).unwrap();
        std::fs::write(
            dir.join("main.py"),
            "from fastapi import FastAPI\napp = FastAPI()\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("proj/wsgi.py"),
            "application = get_wsgi_application()\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("proj/asgi.py"),
            "async def application(scope, receive, send):\n    pass\n",
        )
        .unwrap();
        std::fs::write(dir.join("other.py"), "from .x import application\n").unwrap();
        let dirs = [dir.display().to_string()];
        assert_eq!(
            detect_protocol(&dirs, "main", "app").unwrap().0,
            Protocol::Asgi
        );
        assert_eq!(
            detect_protocol(&dirs, "proj.wsgi", "application")
                .unwrap()
                .0,
            Protocol::Wsgi
        );
        assert_eq!(
            detect_protocol(&dirs, "proj.asgi", "application")
                .unwrap()
                .0,
            Protocol::Asgi
        );
        assert!(detect_protocol(&dirs, "other", "application").is_none());
        assert!(detect_protocol(&dirs, "missing", "application").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
