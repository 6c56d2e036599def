//! `ngx-wsgi from-unit FILE.json`: an NGINX Unit configuration (the `/config` object, a whole
//! control API dump, or a file with only `applications`) as the nginx configuration that serves
//! its Python applications and routes with this module.
//!
//! Exit status: 0 when everything was translated, 2 when something was not (each such option is
//! named on standard error and in a `# not translated:` comment), 1 when the input cannot be
//! read (the error names the JSON path of the wrong value).

mod apps;
mod conditions;
mod encoded;
mod headers;
mod json;
mod mime;
mod out;
mod pattern;
mod rewrite;
mod routes;
mod shared;
mod variables;

use std::path::PathBuf;
use std::process::ExitCode;

use json::{At, BadInput, Read};
use out::{Notes, Out};

pub const USAGE: &str =
    "ngx-wsgi from-unit UNIT.json [--listen [ADDRESS=]NEW_ADDRESS]... [--module PATH]";

struct Options {
    file: PathBuf,
    /// (Unit listener address or `None` for the only listener, nginx address).
    listen: Vec<(Option<String>, String)>,
    module: Option<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut file = None;
    let mut listen = Vec::new();
    let mut module = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs a value")?;
                listen.push(match v.rsplit_once('=') {
                    Some((old, new)) => (Some(old.to_owned()), new.to_owned()),
                    None => (None, v.clone()),
                });
            }
            "--module" => module = Some(it.next().ok_or("--module needs a value")?.clone()),
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a if file.is_none() => file = Some(PathBuf::from(a)),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    Ok(Options {
        file: file.ok_or("which file? give Unit's configuration, as JSON")?,
        listen,
        module,
    })
}

pub fn main(args: &[String], default_module: PathBuf) -> ExitCode {
    let opts = match parse_options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ngx-wsgi from-unit: {e}\nusage: {USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let text = match std::fs::read_to_string(&opts.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ngx-wsgi from-unit: {}: {e}", opts.file.display());
            return ExitCode::FAILURE;
        }
    };
    let module = opts
        .module
        .clone()
        .unwrap_or_else(|| default_module.display().to_string());
    match translate(&text, &opts.listen, &module) {
        Ok((conf, notes)) => {
            print!("{conf}");
            for note in &notes.0 {
                eprintln!("ngx-wsgi from-unit: not translated: {note}");
            }
            if notes.0.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "ngx-wsgi from-unit: {} option(s) not translated; review the output",
                    notes.0.len()
                );
                ExitCode::from(2)
            }
        }
        Err(BadInput(e)) => {
            eprintln!("ngx-wsgi from-unit: {}: {e}", opts.file.display());
            ExitCode::FAILURE
        }
    }
}

/// The `/config` object of what the file holds.
fn config_of(root: &serde_json::Value) -> At<'_> {
    let at = At::root(root);
    match at.get("config") {
        // `GET /` of the control API: {"certificates": ..., "config": ..., "status": ...}.
        Some(config) if at.get("listeners").is_none() && at.get("applications").is_none() => config,
        _ => at,
    }
}

/// The nginx configuration, and what it leaves out.
pub fn translate(
    text: &str,
    listen: &[(Option<String>, String)],
    module: &str,
) -> Read<(String, Notes)> {
    let root: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BadInput(format!("not JSON: {e}")))?;
    let config = config_of(&root);
    config.object()?;
    let mut apps = Vec::new();
    if let Some(a) = config.get("applications") {
        for (name, app) in a.members()? {
            apps.push(apps::read(name, app)?);
        }
    }
    // Only a version other than a bare 3 is compared with the module's, which costs a read of
    // the module file.
    let embedded = if apps
        .iter()
        .any(|a| a.python_version.as_deref().is_some_and(|v| v != "3"))
    {
        embedded_python(module)
    } else {
        None
    };
    for app in &mut apps {
        if let Some(reason) = app
            .python_version
            .as_deref()
            .and_then(|v| apps::version_note(v, embedded))
        {
            app.untranslated.push((format!("{}/type", app.at), reason));
        }
    }
    let unit = routes::Unit {
        apps: &apps,
        routes: config.get("routes"),
        upstreams: config.get("upstreams"),
    };
    let mut shared = shared::Shared::default();
    let mut servers = Out::default();
    // Listeners, or one per application (and target) when the file has none.
    let synthesized: Vec<(String, serde_json::Value)>;
    let listeners: Vec<(String, At<'_>)> = match config.get("listeners") {
        Some(l) => l
            .members()?
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        None => {
            synthesized = apps
                .iter()
                .flat_map(|a| {
                    a.entries.iter().map(move |(target, _)| {
                        let pass = if target.is_empty() {
                            format!("applications/{}", a.name)
                        } else {
                            format!("applications/{}/{target}", a.name)
                        };
                        serde_json::json!({ "pass": pass })
                    })
                })
                .enumerate()
                .map(|(i, pass)| (format!("*:{}", 8080 + i), pass))
                .collect();
            if !synthesized.is_empty() {
                shared.notes.add("listeners", "the file has no listeners: each application (and target) gets a server of its own on port 8080, 8081, ...; choose addresses with --listen");
            }
            synthesized
                .iter()
                .map(|(k, v)| (k.clone(), At::root(v)))
                .collect()
        }
    };
    for (old, new) in listen {
        match old {
            Some(o) if !listeners.iter().any(|(name, _)| name == o) => {
                return Err(BadInput(format!(
                    "--listen {o}={new}: the configuration has no listener {o:?}"
                )));
            }
            None if listeners.len() != 1 => {
                return Err(BadInput(format!("--listen {new}: the configuration has {} listeners; say which with --listen ADDRESS={new}", listeners.len())));
            }
            _ => {}
        }
    }
    for (name, at) in &listeners {
        let new = listen
            .iter()
            .find(|(old, _)| old.as_deref().is_none_or(|o| o == name))
            .map(|(_, n)| n.as_str());
        unit.listener(name, *at, new, &mut shared, &mut servers)?;
    }
    if let Some(routes) = config.get("routes") {
        let named: Vec<(String, At<'_>)> = match routes.value {
            serde_json::Value::Array(_) => vec![(String::new(), routes)],
            _ => routes
                .members()?
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let reason = if shared.chain_cut {
            "no listener passes requests to this route, nor a step of a route one does, within the 17 levels of passes this tool writes (see the chain's note): it is not in the output"
        } else {
            "no listener passes requests to this route, nor a step of a route one does: it is not in the output"
        };
        for (name, at) in named {
            if !shared.used_routes.contains(&name) {
                shared.notes.add(at.path(), reason);
            }
        }
    }
    for app in &apps {
        if !shared.used_apps.contains(&app.name) {
            shared.notes.add(
                &app.at,
                "no listener or route passes requests to it: it is not in the output",
            );
        }
    }
    let used: Vec<&apps::App> = apps
        .iter()
        .filter(|a| shared.used_apps.contains(&a.name) && a.python)
        .collect();
    let mut main = Out::default();
    let mut http = Out::default();
    python_settings(&used, &mut main, &mut http, &mut shared.notes)?;
    settings(&config, &mut http, &mut shared.notes)?;

    let mut conf = Out::default();
    conf.line(
        "# nginx configuration written by `ngx-wsgi from-unit` from NGINX Unit's configuration.",
    );
    for note in &shared.notes.0 {
        conf.line(&format!("# not translated: {note}"));
    }
    conf.line(&format!(
        "load_module {};",
        pattern::token(module).map_err(BadInput)?
    ));
    conf.append(&main);
    conf.open("events");
    conf.line("worker_connections 1024;");
    conf.close();
    conf.open("http");
    conf.append(&http);
    conf.append(&shared.http);
    conf.append(&servers);
    conf.close();
    Ok((conf.text, shared.notes))
}

/// The name of `user`'s primary group on this machine, or why it is unknown.
fn primary_group(user: &str) -> Result<String, String> {
    let unknown = || format!("there is no user {user:?} on this machine");
    let name = std::ffi::CString::new(user).map_err(|_| unknown())?;
    // SAFETY: getpwnam and getgrgid return NULL or a pointer to a static record (its gr_name a
    // NUL-terminated string), read at once on this one thread, before another call reuses it.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return Err(unknown());
        }
        let gid = (*pw).pw_gid;
        let gr = libc::getgrgid(gid);
        if gr.is_null() {
            return Err(format!(
                "the primary group of {user:?} (gid {gid}) has no name on this machine"
            ));
        }
        Ok(std::ffi::CStr::from_ptr((*gr).gr_name)
            .to_string_lossy()
            .into_owned())
    }
}

/// The Python version (major, minor) of the libpython the module at `path` links; `None` when
/// the file is not here.
fn embedded_python(path: &str) -> Option<(u32, u32)> {
    let (_, version) = crate::elf::Elf::open(std::path::Path::new(path))
        .ok()?
        .libpython()?;
    version_numbers(&version)
}

/// `3.11` (or `3.13t`, a free-threaded build's ABI flag after it) as (3, 11).
fn version_numbers(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version
        .trim_end_matches(|c: char| c.is_ascii_lowercase())
        .split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// What every application of the nginx shares: one interpreter per worker, one set of workers.
fn python_settings(
    apps: &[&apps::App],
    main: &mut Out,
    http: &mut Out,
    notes: &mut Notes,
) -> Read<()> {
    let tok = |v: &str| pattern::token(v).map_err(BadInput);
    // One value for all: the first application's, the others' noted when they differ.
    fn first<T: PartialEq>(
        apps: &[&apps::App],
        get: impl Fn(&apps::App) -> Option<T>,
        show: impl Fn(&T) -> String,
        option: &str,
        why: &str,
        notes: &mut Notes,
    ) -> Option<T> {
        let mut chosen: Option<(T, &str)> = None;
        for app in apps {
            let Some(v) = get(app) else { continue };
            match &chosen {
                None => chosen = Some((v, &app.name)),
                Some((c, name)) if *c != v => notes.add(
                    &format!("{}/{option}", app.at),
                    &format!(
                        "{why}: {} of application {name:?} is used, not {}",
                        show(c),
                        show(&v)
                    ),
                ),
                _ => {}
            }
        }
        chosen.map(|(v, _)| v)
    }
    let user = first(
        apps,
        |a| a.user.clone().map(|u| (u, a.group.clone())),
        |(u, g)| match g {
            Some(g) => format!("user {u:?} with group {g:?}"),
            None => format!("user {u:?} with its primary group"),
        },
        "user",
        "every worker runs as nginx's one `user`",
        notes,
    );
    if let Some((user, group)) = user {
        // nginx's `user NAME;` takes the group named NAME, Unit the user's primary group.
        match group.map_or_else(|| primary_group(&user), Ok) {
            Ok(g) => main.line(&format!("user {} {};", tok(&user)?, tok(&g)?)),
            Err(why) => {
                main.line(&format!("user {};", tok(&user)?));
                let at = apps
                    .iter()
                    .find(|a| a.user.as_deref() == Some(user.as_str()))
                    .map_or("applications", |a| a.at.as_str());
                notes.add(&format!("{at}/user"), &format!("{why}: Unit ran the app with the user's primary group, nginx with the group named {user:?} (`nginx -t` fails without one); write `user {user} GROUP;` with the user's group, or add a group {user:?}"));
            }
        }
    } else if let Some(app) = apps.iter().find(|a| a.group.is_some()) {
        notes.add(
            &format!("{}/group", app.at),
            "nginx's `user` directive names a user first: write `user NAME GROUP;`",
        );
    }
    // Each worker serves every app: as many as the busiest application had processes.
    let processes = apps.iter().filter_map(|a| a.processes).max().unwrap_or(1);
    main.line(&format!("worker_processes {processes};"));
    if let Some(wd) = first(
        apps,
        |a| a.working_directory.clone(),
        |v| format!("{v:?}"),
        "working_directory",
        "every worker has nginx's one `working_directory`",
        notes,
    ) {
        main.line(&format!("working_directory {};", tok(&wd)?));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for app in apps {
        for (k, v) in &app.environment {
            match env.iter().find(|(ek, _)| ek == k) {
                Some((_, ev)) if ev != v => notes.add(&format!("{}/environment/{k}", app.at), &format!("nginx's workers share one environment: {k}={ev:?} of an earlier application is used")),
                Some(_) => {}
                None => env.push((k.clone(), v.clone())),
            }
        }
    }
    for (k, v) in &env {
        main.line(&format!("env {};", tok(&format!("{k}={v}"))?));
    }
    if let Some(home) = first(
        apps,
        |a| a.home.clone(),
        |v| format!("{v:?}"),
        "home",
        "one Python interpreter per worker, so one wsgi_python_home for every application",
        notes,
    ) {
        http.line(&format!("wsgi_python_home {};", tok(&home)?));
    }
    let mut paths: Vec<&str> = Vec::new();
    for app in apps {
        for p in &app.sys_path {
            if !paths.contains(&p.as_str()) {
                paths.push(p);
            }
        }
    }
    if !paths.is_empty() {
        let tokens: Vec<String> = paths.iter().map(|p| tok(p)).collect::<Read<_>>()?;
        http.line(&format!("wsgi_python_path {};", tokens.join(" ")));
    }
    // The pool's threads run WSGI requests only: an ASGI app's `threads` sets nothing here.
    if let Some(threads) = apps
        .iter()
        .filter(|a| a.protocol == apps::Protocol::Wsgi)
        .filter_map(|a| a.threads)
        .max()
    {
        http.line(&format!("wsgi_max_threads {threads};"));
    }
    for app in apps
        .iter()
        .filter(|a| a.threads.is_some() && a.protocol == apps::Protocol::Asgi)
    {
        notes.add(
            &format!("{}/threads", app.at),
            "ASGI apps run on one event loop per worker here, not one per thread: wsgi_max_threads (the WSGI apps' threads) is not taken from it",
        );
    }
    if let Some(requests) = apps.iter().filter_map(|a| a.requests).min() {
        http.line(&format!("wsgi_max_requests {requests};"));
        if apps
            .iter()
            .filter_map(|a| a.requests)
            .any(|r| r != requests)
        {
            notes.add(&format!("{}/limits/requests", apps.iter().find(|a| a.requests.is_some_and(|r| r != requests)).map(|a| a.at.as_str()).unwrap_or("applications")), "a worker serves every application and restarts after N requests in all: the smallest limit is used");
        }
    }
    Ok(())
}

/// `settings/http`, the access log, and the MIME types Unit knows.
fn settings(config: &At<'_>, http: &mut Out, notes: &mut Notes) -> Read<()> {
    let mut types: Vec<(String, Vec<String>)> = mime::DEFAULT_TYPES
        .iter()
        .map(|(t, exts)| (t.to_string(), exts.iter().map(|e| e.to_string()).collect()))
        .collect();
    // Unit's defaults where the configuration says nothing.
    let mut values: Vec<(&str, String)> = vec![
        ("client_max_body_size", "8388608".into()),
        ("client_body_timeout", "30s".into()),
        ("client_header_timeout", "30s".into()),
        ("keepalive_timeout", "180s".into()),
        ("send_timeout", "30s".into()),
    ];
    let mut set = |name: &'static str, value: String| {
        if let Some(v) = values.iter_mut().find(|(n, _)| *n == name) {
            v.1 = value;
        } else {
            values.push((name, value));
        }
    };
    if let Some(s) = config.get("settings") {
        for (key, value) in s.members()? {
            match key {
                "http" => {
                    for (k, v) in value.members()? {
                        match k {
                            "max_body_size" => set("client_max_body_size", v.count()?.to_string()),
                            // nginx keeps up to 1.25 times this in memory over HTTP/1.x, Unit
                            // exactly this: close enough for a buffer whose overflow goes to a
                            // temp file in both.
                            "body_buffer_size" => {
                                set("client_body_buffer_size", v.count()?.to_string())
                            }
                            "body_temp_path" => set(
                                "client_body_temp_path",
                                pattern::token(v.str()?).map_err(BadInput)?,
                            ),
                            "websocket" => {
                                for (kk, vv) in v.members()? {
                                    match kk {
                                        "read_timeout" => set(
                                            "asgi_websocket_idle_timeout",
                                            format!("{}s", vv.count()?),
                                        ),
                                        "keepalive_interval" => set(
                                            "asgi_websocket_ping_interval",
                                            format!("{}s", vv.count()?),
                                        ),
                                        "max_frame_size" => notes.add(vv.path(), "the module limits a WebSocket message (all its frames, inflated) by client_max_body_size, not each frame by a size of its own"),
                                        _ => notes.add(vv.path(), "an option unknown to this tool"),
                                    }
                                }
                            }
                            "body_read_timeout" => {
                                set("client_body_timeout", format!("{}s", v.count()?))
                            }
                            "header_read_timeout" => {
                                set("client_header_timeout", format!("{}s", v.count()?))
                            }
                            "idle_timeout" => set("keepalive_timeout", format!("{}s", v.count()?)),
                            "send_timeout" => set("send_timeout", format!("{}s", v.count()?)),
                            "server_version" => {
                                set("server_tokens", if v.bool()? { "on" } else { "off" }.into())
                            }
                            "discard_unsafe_fields" => {
                                if !v.bool()? {
                                    notes.add(v.path(), "the module never maps header names with \"_\" into the environ (they would collide with their \"-\" twins)");
                                }
                            }
                            "log_route" => {
                                if v.bool()? {
                                    notes.add(v.path(), "nginx's `error_log ... debug` (in a debug build) or `rewrite_log on` show how requests are routed");
                                }
                            }
                            "static" => {
                                for (kk, vv) in v.members()? {
                                    if kk != "mime_types" {
                                        notes.add(vv.path(), "an option unknown to this tool");
                                        continue;
                                    }
                                    for (mime, exts) in vv.members()? {
                                        let mut names = Vec::new();
                                        for (e, at) in exts.strings()? {
                                            match e.strip_prefix('.') {
                                                Some(ext) => names.push(ext.to_owned()),
                                                // Unit matches such an entry with the whole file name.
                                                None => notes.add(at.path(), "a whole file name (Unit's entries without a leading dot), where nginx's types map extensions only: left out; a location matching the name with its own types {} and default_type does it"),
                                            }
                                        }
                                        let exts = names;
                                        for (_, list) in types.iter_mut() {
                                            list.retain(|e| !exts.contains(e));
                                        }
                                        types.push((mime.to_owned(), exts));
                                    }
                                }
                            }
                            _ => notes.add(v.path(), "an option unknown to this tool"),
                        }
                    }
                }
                "listen_threads" => notes.add(
                    value.path(),
                    "nginx's workers each run one event loop: worker_processes is the nearest",
                ),
                _ => notes.add(value.path(), "no equivalent in nginx with this module"),
            }
        }
    }
    http.line("# Unit's file types for `share`");
    http.open("types");
    for (mime, exts) in types.iter().filter(|(_, e)| !e.is_empty()) {
        let exts: Vec<String> = exts
            .iter()
            .map(|e| pattern::token(e).map_err(BadInput))
            .collect::<Read<_>>()?;
        http.line(&format!(
            "{} {};",
            pattern::token(mime).map_err(BadInput)?,
            exts.join(" ")
        ));
    }
    http.close();
    http.line("default_type application/octet-stream;");
    match config.get("access_log") {
        None => http.line("access_log off;"),
        Some(log) => {
            let path = match log.value {
                serde_json::Value::String(_) => log.str()?,
                _ => {
                    for (k, v) in log.members()? {
                        if k != "path" {
                            notes.add(v.path(), "Unit's log format and conditions differ from nginx's log_format: nginx's `combined` format is used");
                        }
                    }
                    log.required("path")?.str()?
                }
            };
            http.line(&format!(
                "access_log {};",
                pattern::token(path).map_err(BadInput)?
            ));
        }
    }
    http.line("# settings/http, Unit's defaults where it says nothing");
    for (name, value) in values {
        http.line(&format!("{name} {value};"));
    }
    if let Ok(members) = config.members() {
        for (key, value) in members {
            if ![
                "listeners",
                "routes",
                "applications",
                "upstreams",
                "settings",
                "access_log",
            ]
            .contains(&key)
            {
                notes.add(value.path(), "no equivalent in nginx with this module");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
