//! Listeners, routes and actions as nginx `server` and `location` blocks.
//!
//! Unit tries a route's steps in order and takes the first whose conditions all hold. nginx
//! picks a location by URI, trying regex locations in the order they are written, so when only
//! URIs decide (or only the last step has other conditions) every step becomes a regex location
//! in step order (the last unconditional one `location /`): the first step whose URI patterns
//! match wins, as in Unit. When a step with other conditions has steps after it, a request that
//! fails them must go on to those steps, which a location cannot do: then the route is a dispatch
//! in the rewrite phase, each step's conditions tested in order and its action in a named
//! location. `host` splits a route into server blocks by `server_name`, and `scheme` is known
//! per listener.

use super::apps::{App, Protocol};
use super::conditions::{self, Match};
use super::headers::Answer;
use super::json::{At, BadInput, Read};
use super::out::Out;
use super::pattern::{self, token, Pattern};
use super::shared::Shared;
use super::variables::variables;

/// Everything the translation reads.
pub struct Unit<'a> {
    pub apps: &'a [App],
    pub routes: Option<At<'a>>,
    pub upstreams: Option<At<'a>>,
}

/// One server block's worth of a listener.
struct Server {
    listen: String,
    scheme: &'static str,
    /// Lines every server of the listener starts with (TLS, real IP).
    head: Out,
    /// The variable with the client's scheme when `forwarded` gives it (then `scheme` is the
    /// connection's only).
    scheme_var: Option<String>,
}

/// Where a route's steps are written: nginx allows different things in each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A server block: locations, chosen by URI.
    Server,
    /// Inside a step's location: nested locations.
    Location,
    /// Where no nested location can serve: inside a named location (nginx allows none there),
    /// or after a rewrite (nested locations are chosen by the URI from before it).
    NoLocation,
}

/// Server-level pieces of one server block being written.
#[derive(Default)]
struct Block {
    named: Out,
    named_count: usize,
    /// Jumps into named locations a request makes to reach what is being written.
    jumps: usize,
    /// The server's [`Server::scheme_var`], for the `scheme` conditions of routes it reaches.
    scheme_var: Option<String>,
}

impl Block {
    /// One more jump into a named location (a dispatched step, a share's fallback) to reach
    /// `at`'s action.
    fn jump(&mut self, at: &At<'_>, shared: &mut Shared) {
        self.jumps += 1;
        // nginx's own bound on a request's internal redirects (NGX_HTTP_MAX_URI_CHANGES).
        if self.jumps > 10 {
            shared.notes.add(at.path(), "reached through more than 10 routes or fallbacks: nginx makes at most 10 jumps into named locations per request and answers 500 past them");
        }
    }

    /// The action reached by the last [`Block::jump`] is written.
    fn back(&mut self) {
        self.jumps -= 1;
    }
}

fn tok(value: &str, at: &At<'_>) -> Read<String> {
    token(value).map_err(|e| BadInput(format!("{}: {e}", at.path())))
}

/// A listener's name is an address Unit can listen on: `unix:PATH`, or a host (`*`, an IPv4 or
/// a bracketed IPv6 address) and a port from 1 to 65535. nginx would refuse the rest only at
/// its configuration test, far from the JSON that said it.
fn check_listener_name(name: &str) -> Result<(), String> {
    if name
        .strip_prefix("unix:")
        .is_some_and(|path| !path.is_empty())
    {
        return Ok(());
    }
    let port = name
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|&port| port > 0);
    match port {
        Some(_) => Ok(()),
        None => Err(format!(
            "{name:?} is not an address Unit listens on (*:PORT, IP:PORT, [IPv6]:PORT or \
             unix:PATH, with a port from 1 to 65535)"
        )),
    }
}

/// `listen` of a listener's address: `*:80` is `80`; abstract sockets have no equivalent.
fn listen_address(name: &str) -> Option<String> {
    if let Some(path) = name.strip_prefix("unix:") {
        return (!path.starts_with('@')).then(|| format!("unix:{path}"));
    }
    Some(name.strip_prefix("*:").unwrap_or(name).to_owned())
}

/// Whether a `pass` value names a route (fixed: one chosen by variables is not translated).
fn passes_to_route(target: &str) -> bool {
    !target.contains('$') && pass_parts(target).first().map(String::as_str) == Some("routes")
}

/// A `pass` value split into its parts, `%XX` decoded.
fn pass_parts(pass: &str) -> Vec<String> {
    pass.split('/')
        .map(|part| {
            let mut bytes = Vec::new();
            let b = part.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    if let Some(byte) = pattern::percent_byte(b, i) {
                        bytes.push(byte);
                        i += 3;
                        continue;
                    }
                }
                bytes.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

impl<'a> Unit<'a> {
    /// Writes the server blocks of one listener into `out`.
    pub fn listener(
        &self,
        name: &str,
        at: At<'a>,
        listen: Option<&str>,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        // Unit refuses the file whatever address replaces this one.
        check_listener_name(name).map_err(|e| BadInput(format!("{}: {e}", at.path())))?;
        let Some(address) = listen.map(str::to_owned).or_else(|| listen_address(name)) else {
            shared.notes.add(at.path(), "an abstract UNIX socket: nginx listens on TCP sockets and UNIX socket files only; give another address with --listen");
            return Ok(());
        };
        let mut server = Server {
            listen: address,
            scheme: "http",
            head: Out::default(),
            scheme_var: None,
        };
        let mut listen_options = String::new();
        let mut pass = None;
        let mut application = None;
        for (key, value) in at.members()? {
            match key {
                "pass" => pass = Some(value),
                "application" => application = Some(value),
                "tls" => {
                    server.scheme = "https";
                    listen_options.push_str(" ssl");
                    self.tls(&value, &mut server.head, shared)?;
                }
                "forwarded" | "client_ip" => {
                    server.scheme_var = self.forwarded(&value, &mut server.head, shared)?;
                }
                "backlog" => {
                    let n = value
                        .value
                        .as_i64()
                        .ok_or_else(|| value.wrong("an integer"))?;
                    if n > 0 {
                        listen_options.push_str(&format!(" backlog={n}"));
                    }
                }
                _ => shared
                    .notes
                    .add(value.path(), "an option unknown to this tool"),
            }
        }
        server.listen = format!("{}{listen_options}", tok(&server.listen, &at)?);
        // Unit's router takes `pass` first and the pre-1.8 `application` only without it.
        let pass = match (pass, application) {
            (Some(pass), _) => pass,
            (None, Some(app)) => {
                let name = app.str()?;
                shared.notes.add(app.path(), &format!("a listener option of Unit before 1.8, which later versions still read as \"pass\": \"applications/{name}\"; translated as that pass"));
                self.open_server(&server, None, out);
                out.open("location /");
                self.application(&app, name, "", out, shared)?;
                out.close();
                out.close();
                return Ok(());
            }
            (None, None) => {
                return Err(BadInput(format!(
                    "{}: the required option \"pass\" is missing",
                    at.path()
                )))
            }
        };
        let target = pass.str()?;
        if passes_to_route(target) {
            let parts = pass_parts(target);
            let route_name = parts.get(1).map(String::as_str);
            shared
                .used_routes
                .insert(route_name.unwrap_or_default().to_owned());
            return match self.route(route_name) {
                Some(steps) => {
                    self.route_servers(&server, &steps, &mut vec![target.to_owned()], shared, out)
                }
                None => Err(BadInput(format!(
                    "{}: {target:?} names no route",
                    pass.path()
                ))),
            };
        }
        self.open_server(&server, None, out);
        let mut block = Block::default();
        out.open("location /");
        self.pass(
            &pass,
            Place::Location,
            false,
            out,
            shared,
            &mut block,
            &mut vec![],
        )?;
        out.close();
        out.append(&block.named);
        out.close();
        Ok(())
    }

    fn open_server(&self, server: &Server, names: Option<&str>, out: &mut Out) {
        out.open("server");
        out.line(&format!("listen {};", server.listen));
        if let Some(names) = names {
            out.line(&format!("server_name {names};"));
        }
        out.append(&server.head);
    }

    fn route(&self, name: Option<&str>) -> Option<Vec<At<'a>>> {
        let routes = self.routes?;
        let steps = match (name, routes.value) {
            (None, serde_json::Value::Array(_)) => routes,
            (Some(n), serde_json::Value::Object(_)) => routes.get(n)?,
            _ => return None,
        };
        steps.items().ok()
    }

    fn tls(&self, at: &At<'_>, head: &mut Out, shared: &mut Shared) -> Read<()> {
        let bundles = at.required("certificate")?.strings()?;
        for (i, (bundle, b)) in bundles.iter().enumerate() {
            if i > 0 {
                shared.notes.add(b.path(), "nginx chooses a certificate by server name in server blocks of their own, not among a listener's bundles; only the first bundle is written");
                continue;
            }
            let file = format!("/etc/nginx/unit-certificates/{bundle}.pem");
            head.line(&format!("ssl_certificate {};", tok(&file, b)?));
            head.line(&format!("ssl_certificate_key {};", tok(&file, b)?));
            shared.notes.add(b.path(), &format!("nginx reads certificates from files: save Unit's bundle {bundle:?} (its chain and key, from Unit's state directory, certs/) as {file}"));
        }
        for (key, value) in at.members()? {
            match key {
                "certificate" => {}
                "conf_commands" => {
                    for (name, v) in value.members()? {
                        head.line(&format!(
                            "ssl_conf_command {} {};",
                            tok(name, &v)?,
                            tok(v.str()?, &v)?
                        ));
                    }
                }
                "session" => {
                    for (name, v) in value.members()? {
                        match name {
                            "cache_size" => {
                                let n = v.count()?;
                                head.line(&if n == 0 { "ssl_session_cache off;".to_owned() } else { format!("ssl_session_cache builtin:{n};") });
                            }
                            "timeout" => head.line(&format!("ssl_session_timeout {}s;", v.count()?)),
                            "tickets" => match v.value {
                                serde_json::Value::Bool(b) => head.line(&format!("ssl_session_tickets {};", if *b { "on" } else { "off" })),
                                _ => shared.notes.add(v.path(), "nginx reads session ticket keys from files (ssl_session_ticket_key FILE): write each key's bytes to a file"),
                            },
                            _ => shared.notes.add(v.path(), "an option unknown to this tool"),
                        }
                    }
                }
                _ => shared
                    .notes
                    .add(value.path(), "an option unknown to this tool"),
            }
        }
        Ok(())
    }

    /// `forwarded`: the real IP module, and the scheme from the `protocol` header of trusted
    /// sources (`wsgi_scheme`, through a `geo` and a `map`).
    /// Returns the variable with the scheme, when it comes from a header.
    fn forwarded(&self, at: &At<'_>, head: &mut Out, shared: &mut Shared) -> Read<Option<String>> {
        let sources = at.required("source")?.strings()?;
        let mut trusted = Vec::new();
        for (source, s) in &sources {
            if source == "unix" {
                head.line("set_real_ip_from unix:;");
                trusted.push(None);
            } else if source.starts_with('!')
                || source.contains('-')
                || (source.contains('.') && source.contains(':'))
                || source.starts_with('[')
            {
                shared.notes.add(s.path(), "negations, ranges and ports have no equivalent in set_real_ip_from; this source is left out");
            } else {
                head.line(&format!("set_real_ip_from {};", tok(source, s)?));
                trusted.push(Some(source.clone()));
            }
        }
        // The pre-1.28 form `client_ip` names its header `header`.
        let header = at.get("client_ip").or_else(|| at.get("header"));
        if let Some(h) = header.filter(|h| h.value.is_string()) {
            head.line(&format!("real_ip_header {};", tok(h.str()?, &h)?));
        }
        if let Some(r) = at.get("recursive") {
            if r.bool()? {
                head.line("real_ip_recursive on;");
            }
        }
        let Some(protocol) = at.get("protocol") else {
            return Ok(None);
        };
        let header = protocol.str()?;
        shared.counter += 1;
        let n = shared.counter;
        let entries: Vec<(String, bool)> = trusted
            .iter()
            .flatten()
            .map(|s| (s.clone(), true))
            .collect();
        shared
            .http
            .open(&format!("geo $realip_remote_addr $unit_trusted_{n}"));
        shared.http.line("default 0;");
        for (address, _) in &entries {
            shared.http.line(&format!("{address} 1;"));
        }
        shared.http.close();
        let var = format!("$http_{}", header.to_ascii_lowercase().replace('-', "_"));
        shared
            .http
            .open(&format!("map \"$unit_trusted_{n}:{var}\" $unit_scheme_{n}"));
        shared.http.line("default $scheme;");
        shared.http.line("\"~*^1:(https|on)$\" https;");
        shared.http.line("\"~*^1:http$\" http;");
        shared.http.close();
        head.line(&format!("wsgi_scheme $unit_scheme_{n};"));
        // A WSGI app that trusts the header itself (ProxyFix, SECURE_PROXY_SSL_HEADER) gets the
        // trusted value, never a client's.
        head.line(&format!(
            "wsgi_param {} $unit_scheme_{n};",
            tok(
                &format!("HTTP_{}", header.to_ascii_uppercase().replace('-', "_")),
                &protocol
            )?
        ));
        Ok(Some(format!("$unit_scheme_{n}")))
    }

    /// A listener's route: one server block for requests of any host, and one per host name the
    /// steps ask for, each with the steps that apply to it in their order.
    fn route_servers(
        &self,
        server: &Server,
        steps: &[At<'a>],
        seen: &mut Vec<String>,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        let mut matches = Vec::new();
        for step in steps {
            let mut m = conditions::read(step.get("match"), shared)?;
            if let Some(var) = &server.scheme_var {
                // The client's scheme, known per request only.
                m.scheme_as_test(var)?;
            }
            matches.push(m);
        }
        // Host names steps ask for, literal ones apart from wildcards and regexes.
        let mut names: Vec<String> = Vec::new();
        for m in &matches {
            for p in m.host.iter().flat_map(|h| &h.positive) {
                let name = match p {
                    Pattern::Wildcard { text, .. } => text.to_ascii_lowercase(),
                    Pattern::Regex(r) => format!("~{r}"),
                };
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let chosen_for = |name: Option<&str>, shared: &mut Shared| -> Vec<usize> {
            (0..matches.len())
                .filter(|&i| self.host_applies(&matches[i], name, shared))
                .collect()
        };
        let any_host = chosen_for(None, shared);
        // Host names whose steps are the same share a server block.
        let mut groups: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
        for name in &names {
            let chosen = chosen_for(Some(name), shared);
            match groups.iter_mut().find(|(c, _)| *c == chosen) {
                Some((_, group)) => group.push(name.clone()),
                None => groups.push((chosen, vec![name.clone()])),
            }
        }
        // A server without server_name has the name "", which a step's `host: ""` (requests
        // without Host) needs: the block for other hosts, first and so nginx's default for
        // them, takes a name no request sends instead.
        let other_hosts: &[String] = if names.iter().any(String::is_empty) {
            &["_".to_owned()]
        } else {
            &[]
        };
        self.host_server(
            server,
            other_hosts,
            &any_host,
            steps,
            &matches,
            seen,
            shared,
            out,
        )?;
        for (chosen, group) in &groups {
            self.host_server(server, group, chosen, steps, &matches, seen, shared, out)?;
        }
        Ok(())
    }

    /// Whether a step's `host` condition holds in the server block for `name` (`None`: hosts no
    /// step names).
    fn host_applies(&self, m: &Match, name: Option<&str>, shared: &mut Shared) -> bool {
        let Some(set) = &m.host else { return true };
        let literal_match = |p: &Pattern, host: &str| match p {
            Pattern::Wildcard { text, .. } => pattern::wildcard_matches(text, host),
            Pattern::Regex(r) => r == host.trim_start_matches('~'),
        };
        match name {
            // The block for other hosts: only steps that ask for no host, or only exclude some.
            None => set.positive.is_empty(),
            Some(host) => {
                let wildcard = host.contains('*') || host.starts_with('~');
                let positive = set.positive.is_empty()
                    || set.positive.iter().any(|p| match p {
                        Pattern::Wildcard { text, .. } if wildcard => {
                            text.eq_ignore_ascii_case(host)
                        }
                        _ => literal_match(p, host),
                    });
                let negated = set.negative.iter().any(|p| literal_match(p, host));
                if wildcard && !set.negative.is_empty() {
                    shared.notes.add(&m.host_at, "excluded hosts inside a wildcard or regex server name cannot be told apart; the step applies to every host of that server block");
                }
                positive && !negated
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn host_server(
        &self,
        server: &Server,
        names: &[String],
        chosen: &[usize],
        steps: &[At<'a>],
        matches: &[Match],
        seen: &mut Vec<String>,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        let tokens: Vec<String> = names
            .iter()
            .map(|n| {
                let name = if let Some(re) = n.strip_prefix('~') {
                    // nginx compiles server_name regexes without case, Unit as written, both
                    // over the lowercased host: a regex with capitals (`^Api`, `[A-Z]`) would
                    // match in nginx what it never does in Unit.
                    if re.contains(|c: char| c.is_ascii_uppercase()) {
                        format!("~(?-i){re}")
                    } else {
                        n.clone()
                    }
                } else {
                    pattern::server_name(n)
                };
                token(&name).map_err(|e| BadInput(format!("{}: {e}", server.listen)))
            })
            .collect::<Read<_>>()?;
        self.open_server(
            server,
            (!names.is_empty()).then(|| tokens.join(" ")).as_deref(),
            out,
        );
        let chosen: Vec<(At<'a>, &Match)> =
            chosen.iter().map(|&i| (steps[i], &matches[i])).collect();
        let mut block = Block {
            scheme_var: server.scheme_var.clone(),
            ..Block::default()
        };
        self.steps(
            server,
            &chosen,
            Place::Server,
            seen,
            &mut block,
            shared,
            out,
        )?;
        out.append(&block.named);
        out.close();
        Ok(())
    }

    /// A route's steps, in order: as locations, or as a dispatch when a step's failed
    /// conditions must fall through to the next steps or no location can be written here.
    #[allow(clippy::too_many_arguments)]
    fn steps(
        &self,
        server: &Server,
        steps: &[(At<'a>, &Match)],
        place: Place,
        seen: &mut Vec<String>,
        block: &mut Block,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        // Steps that can apply under this listener's scheme.
        let live: Vec<&(At<'a>, &Match)> = steps
            .iter()
            .filter(|(_, m)| match &m.scheme {
                Some(set) => conditions::scheme_admits(set, server.scheme),
                None => true,
            })
            .collect();
        let mut rest = &live[..];
        if place == Place::Server {
            // Leading unconditional-URI `return`s guarded by one condition (allow-deny lists):
            // server-level `if`s, which nginx runs before choosing a location, as Unit runs
            // those steps first.
            while let Some((step, m)) = rest.first() {
                let action = step.required("action")?;
                let ret = match (pattern::set_regex(&m.uri), m.tests.as_slice()) {
                    (None, [_]) => simple_return(&action)?,
                    _ => None,
                };
                let Some(ret) = ret else { break };
                out.line(&format!("# {}", step.path()));
                out.append(&m.tests[0].prelude);
                out.open(&format!("if ({})", m.tests[0].when_met));
                out.line(&ret);
                out.close();
                rest = &rest[1..];
            }
        }
        // A step without conditions takes every request: the steps after it are never reached.
        let reached = rest
            .iter()
            .position(|(_, m)| takes_every_request(m))
            .map_or(rest.len(), |i| i + 1);
        // As in Unit: this is the configuration's own, not a loss of the translation.
        let unreached = rest.get(reached).map(|(next, _)| {
            format!(
                "# {} and the steps after it: no request reaches them here, {} takes every one",
                next.path(),
                rest[reached - 1].0.path()
            )
        });
        let rest = &rest[..reached];
        let falls_through = rest.iter().rev().skip(1).any(|(_, m)| !m.tests.is_empty());
        if place == Place::NoLocation || falls_through {
            self.dispatch(rest, place, seen, block, shared, out)?;
        } else {
            self.locations(rest, place, seen, block, shared, out)?;
        }
        if let Some(line) = unreached {
            out.line(&line);
        }
        Ok(())
    }

    /// Steps as locations, chosen by URI: only the last step may have other conditions, and a
    /// request failing them has no step left, so the location answers Unit's 404.
    #[allow(clippy::too_many_arguments)]
    fn locations(
        &self,
        steps: &[&(At<'a>, &Match)],
        place: Place,
        seen: &mut Vec<String>,
        block: &mut Block,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        let top = place == Place::Server;
        for (step, m) in steps {
            let action = step.required("action")?;
            let head = match pattern::set_regex(&m.uri) {
                None if top && takes_every_request(m) => "location /".to_owned(),
                None => "location ~ ^/".to_owned(),
                Some(re) => format!("location ~ {}", tok(&re, &step.required("match")?)?),
            };
            out.line(&format!("# {}", step.path()));
            out.open(&head);
            for t in &m.tests {
                out.append(&t.prelude);
                out.open(&format!("if ({})", t.when_failed));
                out.line("return 404;");
                out.close();
            }
            self.action(&action, Place::Location, out, shared, block, seen)?;
            out.close();
        }
        if !steps.last().is_some_and(|(_, m)| takes_every_request(m)) {
            // Unit answers 404 when no step matches.
            out.open(if top { "location /" } else { "location ~ ^/" });
            out.line("return 404;");
            out.close();
        }
        Ok(())
    }

    /// Steps tried in order by the rewrite module, as Unit tries them: each step's conditions
    /// (its URI among them) clear `$unit_step` when they fail, and the first step left standing
    /// is entered through `error_page` into the named location that holds its action.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        steps: &[&(At<'a>, &Match)],
        place: Place,
        seen: &mut Vec<String>,
        block: &mut Block,
        shared: &mut Shared,
        out: &mut Out,
    ) -> Read<()> {
        if place == Place::Server {
            out.open("location /");
        }
        if !steps.is_empty() {
            out.line("error_page 418 = $unit_step;");
            // Without it, nginx follows one error page per request: a route passed to from a
            // step entered this way could not dispatch again.
            out.line("recursive_error_pages on;");
        }
        for (step, m) in steps {
            let action = step.required("action")?;
            block.named_count += 1;
            let name = format!("@unit_step_{}", block.named_count);
            let uri = conditions::uri_test(&m.uri)
                .map_err(|e| BadInput(format!("{}: {}", step.path(), e.0)))?;
            out.line(&format!("# {}", step.path()));
            out.line(&format!("set $unit_step {name};"));
            for t in uri.iter().chain(&m.tests) {
                out.append(&t.prelude);
                out.open(&format!("if ({})", t.when_failed));
                out.line("set $unit_step \"\";");
                out.close();
            }
            if takes_every_request(m) {
                out.line("return 418;");
            } else {
                out.open("if ($unit_step)");
                out.line("return 418;");
                out.close();
            }
            let mut named = Out::default();
            named.line(&format!("# {}", step.path()));
            named.open(&format!("location {name}"));
            block.jump(step, shared);
            self.action(&action, Place::NoLocation, &mut named, shared, block, seen)?;
            block.back();
            named.close();
            block.named.append(&named);
        }
        if !steps.last().is_some_and(|(_, m)| takes_every_request(m)) {
            // Unit answers 404 when no step matches.
            out.line("return 404;");
        }
        if place == Place::Server {
            out.close();
        }
        Ok(())
    }

    /// A step's action into the current location.
    fn action(
        &self,
        at: &At<'a>,
        place: Place,
        out: &mut Out,
        shared: &mut Shared,
        block: &mut Block,
        seen: &mut Vec<String>,
    ) -> Read<()> {
        let mut rewrite = None;
        let mut headers = None;
        let mut kind = None;
        for (key, value) in at.members()? {
            match key {
                "pass" | "proxy" | "return" | "share" => {
                    if let Some(k) = kind {
                        return Err(BadInput(format!("{}: an action has one of pass, proxy, return or share, not both {k:?} and {key:?}", at.path())));
                    }
                    kind = Some(key);
                }
                "location" | "index" | "fallback" | "types" | "chroot" | "follow_symlinks"
                | "traverse_mounts" => {}
                "rewrite" => {
                    let (template, unlike) = super::rewrite::rewrite_template(value.str()?);
                    if let Some(why) = unlike {
                        shared.notes.add(value.path(), &why);
                    }
                    match variables(&template) {
                        Ok(uri) => rewrite = Some(tok(&uri, &value)?),
                        Err(e) => shared.notes.add(value.path(), &e),
                    }
                }
                "response_headers" => headers = Some(value),
                _ => shared
                    .notes
                    .add(value.path(), "an option unknown to this tool"),
            }
        }
        let to_route = match kind {
            Some("pass") => passes_to_route(at.required("pass")?.str()?),
            _ => false,
        };
        if to_route {
            // The route's steps test the rewritten URI: no `break`, so that the dispatch after it
            // runs; it always ends in a `return`, so nginx never looks for another location.
            if let Some(uri) = &rewrite {
                out.line(&format!("rewrite ^ {uri};"));
            }
            if headers.is_some() {
                // Unit adds the headers of the action that answers, a step of that route.
                out.line(&format!("# {}/response_headers: Unit adds those of the step that answers, not of one passing to a route", at.path()));
            }
        } else {
            if let Some(uri) = &rewrite {
                out.line(&format!("rewrite ^ {uri} break;"));
            }
            if let Some(h) = &headers {
                let answer = match kind {
                    Some("share") => Answer::Share,
                    Some("return") => Answer::Return {
                        location: at.get("location").is_some(),
                        status: at.required("return")?.count()?,
                    },
                    Some("pass")
                        if pass_parts(at.required("pass")?.str()?)
                            .first()
                            .is_some_and(|p| p == "applications") =>
                    {
                        Answer::App
                    }
                    _ => Answer::Proxy,
                };
                super::headers::write(h, answer, out, shared)?;
            }
        }
        match kind {
            Some("pass") => self.pass(
                &at.required("pass")?,
                place,
                rewrite.is_some(),
                out,
                shared,
                block,
                seen,
            ),
            Some("proxy") => self.proxy(&at.required("proxy")?, out, shared),
            Some("return") => {
                match return_line(at)? {
                    Some(line) => {
                        if relative_location(at) {
                            out.line("absolute_redirect off;");
                        }
                        out.line(&line)
                    }
                    None => {
                        shared.notes.add(at.path(), "a `location` with a status nginx's `return` cannot give it to (301, 302, 303, 307, 308)");
                        out.line(&format!("return {};", at.required("return")?.count()?));
                    }
                }
                Ok(())
            }
            Some("share") => self.share(at, out, shared, block, seen),
            _ => Err(BadInput(format!(
                "{}: an action needs pass, proxy, return or share",
                at.path()
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        at: &At<'a>,
        place: Place,
        rewritten: bool,
        out: &mut Out,
        shared: &mut Shared,
        block: &mut Block,
        seen: &mut Vec<String>,
    ) -> Read<()> {
        let target = at.str()?;
        if target.contains('$') {
            shared.notes.add(at.path(), "a destination chosen by variables at run time: nginx's locations are fixed; write one location per destination");
            out.line("return 404;");
            return Ok(());
        }
        let parts = pass_parts(target);
        match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["applications", name] | ["applications", name, _] => {
                let target_name = parts.get(2).map(String::as_str).unwrap_or("");
                self.application(at, name, target_name, out, shared)
            }
            ["routes"] | ["routes", _] => {
                if seen.iter().any(|s| s == target) {
                    shared.notes.add(at.path(), "a route that passes back to itself (Unit gives up on such a request after 255 passes)");
                    out.line("return 404;");
                    return Ok(());
                }
                // Each level is written out again inside the one before it: a bound keeps the
                // output's size sane, well below Unit's 255 passes.
                if seen.len() > 16 {
                    shared.chain_cut = true;
                    shared.notes.add(at.path(), &format!("{target:?} is the 18th route of a chain of passes from one listener; this tool writes routes nested up to 17 deep (Unit follows up to 255 passes): this step answers 404 here"));
                    out.line("return 404;");
                    return Ok(());
                }
                shared.used_routes.insert(parts.get(1).cloned().unwrap_or_default());
                let steps = self
                    .route(parts.get(1).map(String::as_str))
                    .ok_or_else(|| BadInput(format!("{}: {target:?} names no route", at.path())))?;
                let mut matches = Vec::new();
                for step in &steps {
                    let mut m = conditions::read(step.get("match"), shared)?;
                    m.host_and_scheme_as_tests(block.scheme_var.as_deref().unwrap_or("$scheme"))?;
                    matches.push(m);
                }
                let chosen: Vec<(At<'a>, &Match)> = steps.iter().copied().zip(matches.iter()).collect();
                seen.push(target.to_owned());
                // Its scheme decides nothing: the route's `scheme` conditions are tests now.
                let server = Server { listen: String::new(), scheme: "http", head: Out::default(), scheme_var: None };
                // After a rewrite, nested locations would be chosen by the URI from before it.
                let place = if rewritten { Place::NoLocation } else { place };
                let result = self.steps(&server, &chosen, place, seen, block, shared, out);
                seen.pop();
                result
            }
            ["upstreams", name] => {
                let servers = self
                    .upstreams
                    .and_then(|u| u.get(name))
                    .ok_or_else(|| BadInput(format!("{}: {target:?} names no upstream", at.path())))?
                    .required("servers")?;
                let upstream = format!("unit_{}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
                if shared.upstreams_written.insert(upstream.clone()) {
                    let mut block_out = Out::default();
                    block_out.open(&format!("upstream {upstream}"));
                    let members = servers.members()?;
                    let mut weights = Vec::new();
                    for (address, s) in &members {
                        let w = match s.get("weight") {
                            Some(w) => w.number()?,
                            None => 1.0,
                        };
                        weights.push((address.to_string(), w, *s));
                    }
                    // nginx's weights are whole numbers: scale fractional ones, keeping ratios.
                    let scale = if weights.iter().all(|(_, w, _)| w.fract() == 0.0) { 1.0 } else { 100.0 };
                    for (address, w, s) in weights {
                        let addr = tok(&address, &s)?;
                        if w == 0.0 {
                            block_out.line(&format!("server {addr} down;"));
                        } else {
                            block_out.line(&format!("server {addr} weight={};", ((w * scale).round() as u64).max(1)));
                        }
                    }
                    block_out.close();
                    shared.http.append(&block_out);
                }
                proxy_lines(&format!("http://{upstream}"), out);
                Ok(())
            }
            _ => Err(BadInput(format!("{}: {target:?} is not a destination (applications/NAME, applications/NAME/TARGET, routes, routes/NAME or upstreams/NAME)", at.path()))),
        }
    }

    fn application(
        &self,
        at: &At<'_>,
        name: &str,
        target: &str,
        out: &mut Out,
        shared: &mut Shared,
    ) -> Read<()> {
        let app =
            self.apps.iter().find(|a| a.name == name).ok_or_else(|| {
                BadInput(format!("{}: there is no application {name:?}", at.path()))
            })?;
        shared.used_apps.insert(app.name.clone());
        for (path, reason) in &app.untranslated {
            shared.notes.add(path, reason);
        }
        if !app.python {
            out.line("return 502;");
            return Ok(());
        }
        let entry = app.entry(target).ok_or_else(|| {
            BadInput(if target.is_empty() {
                format!("{}: the application {name:?} has targets: name one (applications/{name}/TARGET)", at.path())
            } else {
                format!("{}: the application {name:?} has no target {target:?}", at.path())
            })
        })?;
        let source = if target.is_empty() {
            app.at.clone()
        } else {
            format!("{}/targets/{target}", app.at)
        };
        out.line(&format!("# {source}"));
        if entry.factory {
            out.line("return 502;");
            return Ok(());
        }
        if let Some(why) = &app.protocol_source {
            out.line(&format!(
                "# {} (Unit detects it; told here from {why})",
                if app.protocol == Protocol::Asgi {
                    "ASGI"
                } else {
                    "WSGI"
                }
            ));
        }
        let directive = match app.protocol {
            Protocol::Wsgi => "wsgi_app",
            Protocol::Asgi => "asgi_app",
        };
        out.line(&format!("{directive} {}:{};", entry.module, entry.callable));
        if let Some(prefix) = &entry.prefix {
            out.line(&format!("wsgi_mount {};", tok(prefix, at)?));
        }
        if let Some(timeout) = app.timeout {
            out.line(&format!("wsgi_read_timeout {timeout}s;"));
        }
        Ok(())
    }

    fn proxy(&self, at: &At<'_>, out: &mut Out, shared: &mut Shared) -> Read<()> {
        let url = at.str()?;
        let Some(rest) = url.strip_prefix("http://") else {
            shared
                .notes
                .add(at.path(), "Unit proxies to http:// addresses only");
            out.line("return 502;");
            return Ok(());
        };
        let target = match rest.strip_prefix("unix:") {
            Some(path) => format!("http://unix:{path}:"),
            None => format!("http://{rest}"),
        };
        if rest.contains("control.unit.sock") {
            // What such a route exposed (mostly `/status`) goes with Unit.
            shared.notes.add(at.path(), "a proxy to Unit's control socket, which goes away with Unit: for figures like its /status, a location with `wsgi_status;` answers the module's (Prometheus text; protect it with allow/deny)");
        }
        proxy_lines(&tok(&target, at)?, out);
        Ok(())
    }

    /// `share`: files tried in order, then the fallback or 404.
    fn share(
        &self,
        at: &At<'a>,
        out: &mut Out,
        shared: &mut Shared,
        block: &mut Block,
        seen: &mut Vec<String>,
    ) -> Read<()> {
        let share = at.required("share")?;
        let index = match at.get("index") {
            Some(i) => i.str()?.to_owned(),
            None => "index.html".to_owned(),
        };
        let mut files = Vec::new();
        for (text, s) in share.strings()? {
            match variables(&text) {
                Ok(path) => {
                    // Variables came with 1.26: only a share without them can be an older one.
                    if path.ends_with('/') && !text.contains('$') {
                        let dir = text.trim_end_matches('/');
                        shared.notes.add(s.path(), &format!("Unit 1.26 and later serve the one file {text}{index} for every request this step takes, as written here; before 1.26 a share was a directory the request's URI was appended to (what older howtos meant): if so, write \"{dir}$uri\" and run the tool again"));
                    }
                    files.push(path);
                }
                Err(e) => {
                    shared.notes.add(s.path(), &e);
                }
            }
        }
        // `DIR$uri` everywhere: nginx's root; otherwise whole paths from `/`.
        let dirs: Vec<Option<&str>> = files.iter().map(|f| f.strip_suffix("$uri")).collect();
        let mut tries = Vec::new();
        match dirs.first() {
            Some(Some(dir)) if dirs.iter().all(|d| *d == Some(*dir)) => {
                let root = if dir.is_empty() { "/" } else { dir };
                out.line(&format!("root {};", tok(root, &share)?));
                tries.push("$uri".to_owned());
                tries.push(format!("$uri/{index}"));
            }
            _ => {
                out.line("root /;");
                for f in &files {
                    // Unit appends the index to a share that ends in a slash, whatever made it.
                    if f.ends_with('/') {
                        tries.push(format!("{f}{index}"));
                    } else {
                        tries.push(f.clone());
                    }
                    if f.ends_with("$uri") {
                        tries.push(format!("{f}/{index}"));
                    }
                }
            }
        }
        for (key, value) in at.members()? {
            match key {
                "types" => shared.notes.add(value.path(), "nginx serves files of every type: there is no MIME filter; deny the types you need hidden with a location of their own"),
                "chroot" | "traverse_mounts" => shared.notes.add(value.path(), "nginx has no equivalent; disable_symlinks is the nearest"),
                "follow_symlinks" if !value.bool()? => out.line("disable_symlinks on;"),
                _ => {}
            }
        }
        let last = match at.get("fallback") {
            Some(fallback) => {
                block.named_count += 1;
                let name = format!("@unit_fallback_{}", block.named_count);
                let mut named = Out::default();
                named.line(&format!("# {}", fallback.path()));
                named.open(&format!("location {name}"));
                block.jump(&fallback, shared);
                self.action(
                    &fallback,
                    Place::NoLocation,
                    &mut named,
                    shared,
                    block,
                    seen,
                )?;
                block.back();
                named.close();
                block.named.append(&named);
                name
            }
            None => "=404".to_owned(),
        };
        let tries: Vec<String> = tries.iter().map(|t| tok(t, &share)).collect::<Read<_>>()?;
        out.line(&format!("try_files {} {last};", tries.join(" ")));
        Ok(())
    }
}

fn takes_every_request(m: &Match) -> bool {
    pattern::set_regex(&m.uri).is_none() && m.tests.is_empty()
}

/// `return CODE [URL];` of a `return` action, when nginx can say it that way.
fn return_line(at: &At<'_>) -> Read<Option<String>> {
    let Some(code_at) = at.get("return") else {
        return Ok(None);
    };
    let code = code_at.count()?;
    if code > 999 {
        return Err(code_at.wrong("a status from 0 to 999"));
    }
    match at.get("location") {
        None => Ok(Some(format!("return {code};"))),
        Some(l) if matches!(code, 301 | 302 | 303 | 307 | 308) => {
            let url = variables(l.str()?).map_err(|e| BadInput(format!("{}: {e}", l.path())))?;
            Ok(Some(format!("return {code} {};", tok(&url, &l)?)))
        }
        Some(_) => Ok(None),
    }
}

/// Whether a `return`'s `location` is one nginx would make absolute (with its own scheme, name
/// and port: its listen port, not the balancer's) where Unit sends it as written.
fn relative_location(at: &At<'_>) -> bool {
    at.get("location")
        .and_then(|l| l.value.as_str())
        .is_some_and(|l| !l.starts_with("http://") && !l.starts_with("https://"))
}

/// The same, for a server-level `if`: only a `return` with nothing around it (and no
/// `absolute_redirect off`, which an `if` cannot hold).
fn simple_return(at: &At<'_>) -> Read<Option<String>> {
    if at.get("rewrite").is_some() || at.get("response_headers").is_some() || relative_location(at)
    {
        return Ok(None);
    }
    return_line(at)
}

/// Unit's proxy passes the request as it came, with its Host, over HTTP/1.1.
fn proxy_lines(target: &str, out: &mut Out) {
    out.line(&format!("proxy_pass {target};"));
    out.line("proxy_http_version 1.1;");
    out.line("proxy_set_header Host $http_host;");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_variables_become_nginx_ones() {
        assert_eq!(variables("/www/static$uri").unwrap(), "/www/static$uri");
        assert_eq!(
            variables("/opt/netbox/netbox${uri}").unwrap(),
            "/opt/netbox/netbox$uri"
        );
        assert_eq!(
            variables("https://$host$request_uri").unwrap(),
            "https://$host$request_uri"
        );
        assert_eq!(variables("${method}_x").unwrap(), "${request_method}_x");
        assert_eq!(variables("$header_X_Real_IP").unwrap(), "$http_x_real_ip");
        assert_eq!(
            variables("${response_header_content_type};charset=utf-8").unwrap(),
            "$sent_http_content_type;charset=utf-8"
        );
        assert!(variables("$dollar").unwrap_err().contains("$dollar"));
    }

    #[test]
    fn listener_addresses_become_listen_values() {
        assert_eq!(listen_address("*:80").unwrap(), "80");
        assert_eq!(listen_address("127.0.0.1:8300").unwrap(), "127.0.0.1:8300");
        assert_eq!(listen_address("[::]:8080").unwrap(), "[::]:8080");
        assert_eq!(
            listen_address("unix:/run/app.sock").unwrap(),
            "unix:/run/app.sock"
        );
        assert!(listen_address("unix:@abstract").is_none());
    }

    #[test]
    fn listener_names_unit_refuses_are_refused() {
        for good in [
            "*:80",
            "127.0.0.1:8300",
            "[::]:8080",
            "unix:/run/app.sock",
            "*:65535",
        ] {
            assert!(check_listener_name(good).is_ok(), "{good}");
        }
        for bad in [
            "nope", "*:0", "*:99999", ":80", "*:", "*:http", "unix:", "80",
        ] {
            assert!(check_listener_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pass_values_are_percent_decoded() {
        assert_eq!(
            pass_parts("routes/slashes%2Fin%2Fname"),
            ["routes", "slashes/in/name"]
        );
        assert_eq!(
            pass_parts("applications/app/front"),
            ["applications", "app", "front"]
        );
    }
}
