//! The translation of whole configurations: what nginx gets, and what is listed as not
//! translated. (tests/test_from_unit.py runs the output in a real nginx.)

use super::*;

const MODULE: &str = "/m/libngx_http_wsgi_module.so";

fn run(json: &str) -> (String, Vec<String>) {
    let (conf, notes) = translate(json, &[], MODULE).unwrap();
    (conf, notes.0)
}

fn error(json: &str) -> String {
    match translate(json, &[], MODULE) {
        Err(BadInput(e)) => e,
        Ok((conf, _)) => panic!("translated:\n{conf}"),
    }
}

/// The lines of the output, without indentation or comments.
fn lines(conf: &str) -> Vec<String> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The JSON paths the notes name, in order.
fn note_paths(notes: &[String]) -> Vec<&str> {
    notes
        .iter()
        .map(|n| n.split(": ").next().unwrap())
        .collect()
}

fn has(conf: &str, wanted: &[&str]) {
    let got = lines(conf);
    // `wanted` appears in this order, not necessarily adjacent.
    let mut at = 0;
    for w in wanted {
        match got[at..].iter().position(|l| l == w) {
            Some(i) => at += i + 1,
            None => panic!("{w:?} not found (in order) in:\n{conf}"),
        }
    }
}

const NETBOX: &str = r#"{
  "listeners": {
    "0.0.0.0:8080": {"pass": "routes/main", "forwarded": {"client_ip": "X-Forwarded-For",
      "protocol": "X-Forwarded-Proto", "source": ["10.0.0.0/8", "172.16.0.0/12"]}}
  },
  "routes": {
    "main": [
      {"match": {"uri": "/static/*"}, "action": {"share": "/opt/netbox/netbox${uri}"}},
      {"action": {"pass": "applications/netbox"}}
    ]
  },
  "applications": {
    "netbox": {"type": "python 3", "path": "/opt/netbox/netbox/", "module": "netbox.wsgi",
      "home": "/opt/netbox/venv", "protocol": "wsgi",
      "processes": {"max": 4, "spare": 1, "idle_timeout": 120}}
  },
  "access_log": "/dev/stdout",
  "settings": {"http": {"max_body_size": 104857600}}
}"#;

#[test]
fn netbox_becomes_a_static_location_and_the_app() {
    let (conf, notes) = run(NETBOX);
    has(
        &conf,
        &[
            "load_module /m/libngx_http_wsgi_module.so;",
            "worker_processes 4;",
            "http {",
            "wsgi_python_home /opt/netbox/venv;",
            "wsgi_python_path /opt/netbox/netbox/;",
            "access_log /dev/stdout;",
            "client_max_body_size 104857600;",
            "server {",
            "listen 0.0.0.0:8080;",
            "set_real_ip_from 10.0.0.0/8;",
            "set_real_ip_from 172.16.0.0/12;",
            "real_ip_header X-Forwarded-For;",
            "wsgi_scheme $unit_scheme_1;",
            "wsgi_param HTTP_X_FORWARDED_PROTO $unit_scheme_1;",
            "location ~ ^/static/ {",
            "root /opt/netbox/netbox;",
            "try_files $uri $uri/index.html =404;",
            "}",
            "location / {",
            "wsgi_app netbox.wsgi:application;",
        ],
    );
    assert_eq!(
        note_paths(&notes),
        [
            "applications/netbox/processes/spare",
            "applications/netbox/processes/idle_timeout",
        ]
    );
    assert!(conf.contains(
        "# not translated: applications/netbox/processes/spare: nginx runs a fixed number"
    ));
}

#[test]
fn a_whole_control_api_dump_is_read_from_its_config() {
    let dump = format!(r#"{{"certificates": {{}}, "config": {NETBOX}, "status": {{}}}}"#);
    let (conf, _) = run(&dump);
    assert!(conf.contains("wsgi_app netbox.wsgi:application;"));
}

#[test]
fn only_applications_get_a_server_each() {
    let (conf, notes) = run(
        r#"{"applications": {"a": {"type": "python", "module": "a", "protocol": "asgi", "prefix": "/a"},
            "b": {"type": "python", "protocol": "wsgi", "targets": {"x": {"module": "bx"}}}}}"#,
    );
    has(
        &conf,
        &[
            "listen 8080;",
            "asgi_app a:application;",
            "wsgi_mount /a;",
            "listen 8081;",
            "wsgi_app bx:application;",
        ],
    );
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("listeners: the file has no listeners"));
}

#[test]
fn steps_keep_their_order_as_regex_locations() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [
              {"match": {"uri": ["/v1/*", "/v2/*"]}, "action": {"rewrite": "/app$uri", "pass": "applications/app"}},
              {"match": {"uri": "~\\.jpe?g$"}, "action": {"share": ["/var/www/static$uri", "/var/www/assets$uri"],
                 "fallback": {"pass": "upstreams/cdn"}}},
              {"match": {"uri": "/proxy/*"}, "action": {"proxy": "http://127.0.0.1:9000"}},
              {"match": {"uri": "/return/*"}, "action": {"return": 301, "location": "https://www.example.com"}}
            ],
            "upstreams": {"cdn": {"servers": {"127.0.0.1:8001": {}, "127.0.0.1:8002": {"weight": 0.5}}}},
            "applications": {"app": {"type": "python", "module": "app", "callable": "app", "protocol": "wsgi"}}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "upstream unit_cdn {",
            "server 127.0.0.1:8001 weight=100;",
            "server 127.0.0.1:8002 weight=50;",
            "listen 80;",
            "location ~ ^(?:/v1/|/v2/) {",
            "rewrite ^ /app$uri break;",
            "wsgi_app app:app;",
            "location ~ \\.jpe?g$ {",
            "root /;",
            "try_files /var/www/static$uri /var/www/static$uri/index.html /var/www/assets$uri /var/www/assets$uri/index.html @unit_fallback_1;",
            "location ~ ^/proxy/ {",
            "proxy_pass http://127.0.0.1:9000;",
            "location ~ ^/return/ {",
            "return 301 https://www.example.com;",
            "location / {",
            "return 404;",
            "location @unit_fallback_1 {",
            "proxy_pass http://unit_cdn;",
        ],
    );
}

#[test]
fn a_catch_all_step_before_others_takes_every_request() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"action": {"return": 200}}, {"match": {"uri": "/x"}, "action": {"return": 204}}]}"#);
    has(&conf, &["location / {", "return 200;"]);
    assert!(!conf.contains("return 204") && !conf.contains("return 404"));
    // Unit never reaches that step either: a comment, not a loss of the translation.
    assert!(notes.is_empty(), "{notes:?}");
    assert!(conf.contains(
        "# routes/1 and the steps after it: no request reaches them here, routes/0 takes every one"
    ));
}

#[test]
fn hosts_become_server_blocks_with_the_steps_that_apply() {
    let (conf, _) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [
              {"match": {"host": "blog.example.com"}, "action": {"return": 201}},
              {"match": {"host": "*.example.com", "uri": "/x"}, "action": {"return": 202}},
              {"action": {"return": 203}}
            ]}"#);
    // Other hosts: only the last step; blog.example.com: its own first (which takes all);
    // other subdomains: /x, then the rest.
    let servers: Vec<&str> = conf.split("server {").skip(1).collect();
    assert_eq!(servers.len(), 3, "{conf}");
    assert!(!servers[0].contains("server_name") && servers[0].contains("return 203;"));
    assert!(!servers[0].contains("return 201;") && !servers[0].contains("return 202;"));
    assert!(
        servers[1].contains("server_name blog.example.com;")
            && servers[1].contains("return 201;")
            && !servers[1].contains("return 203;")
    );
    assert!(
        servers[2].contains("server_name *.example.com;")
            && servers[2].contains("return 202;")
            && servers[2].contains("return 203;")
    );
}

#[test]
fn host_names_with_the_same_steps_share_a_server_block() {
    let (conf, _) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"host": ["a.test", "*.a.test", "~^b\\d+$"]}, "action": {"return": 403}},
                       {"action": {"return": 200}}]}"#);
    let servers: Vec<&str> = conf.split("server {").skip(1).collect();
    assert_eq!(servers.len(), 2, "{conf}");
    assert!(
        servers[1].contains("server_name a.test *.a.test ~^b\\d+$;"),
        "{conf}"
    );
}

#[test]
fn scheme_is_known_per_listener_and_leading_returns_run_first() {
    let (conf, notes) = run(
        r#"{"listeners": {"*:80": {"pass": "routes"}, "*:443": {"pass": "routes", "tls": {"certificate": "bundle"}}},
            "routes": [
              {"match": {"scheme": "http"}, "action": {"return": 301, "location": "https://$host$request_uri"}},
              {"match": {"source": ["!10.0.0.0/8", "*"]}, "action": {"return": 403}},
              {"action": {"return": 200}}
            ]}"#,
    );
    let servers: Vec<&str> = conf.split("server {").skip(1).collect();
    assert!(
        servers[0].contains("listen 80;")
            && servers[0].contains("return 301 https://$host$request_uri;")
    );
    assert!(!servers[0].contains("return 200;"));
    assert!(servers[1].contains("listen 443 ssl;"));
    assert!(servers[1].contains("ssl_certificate /etc/nginx/unit-certificates/bundle.pem;"));
    has(
        servers[1],
        &[
            "if ($unit_address_1 = 1) {",
            "return 403;",
            "location / {",
            "return 200;",
        ],
    );
    assert!(!servers[1].contains("return 301"));
    has(
        &conf,
        &[
            "geo $remote_addr $unit_address_1 {",
            // `*` is the default: a 0.0.0.0/0 entry would be a duplicate network to nginx.
            "default 1;",
            "10.0.0.0/8 0;",
            "}",
        ],
    );
    assert!(!conf.contains("0.0.0.0/0"));
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0]
        .starts_with("listeners/*:443/tls/certificate: nginx reads certificates from files"));
}

#[test]
fn conditions_of_the_last_step_are_if_tests_in_its_location() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [
              {"match": {"uri": "/static/*"}, "action": {"return": 204}},
              {"match": {"uri": "/api/*", "method": ["GET", "HEAD"], "headers": {"X-Token": "*"}}, "action": {"return": 200}}
            ]}"#);
    assert!(notes.is_empty(), "{notes:?}");
    // Failing them, no step is left: Unit's 404 too.
    has(
        &conf,
        &[
            "location ~ ^/static/ {",
            "return 204;",
            "location ~ ^/api/ {",
            "if ($request_method !~ \"^(?:GET$|HEAD$)\") {",
            "return 404;",
            // `*`: any value, but the header must be there.
            "if ($http_x_token !~ \"^(?=.)\") {",
            "return 404;",
            "return 200;",
            "location / {",
            "return 404;",
        ],
    );
    assert!(!conf.contains("$unit_step"));
}

#[test]
fn conditions_with_steps_after_them_fall_through_in_a_dispatch() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [
              {"match": {"source": "!10.0.0.0/8"}, "action": {"return": 403}},
              {"match": {"uri": "/api/*", "method": ["GET", "HEAD"]}, "action": {"return": 200}},
              {"match": {"uri": "/api/*"}, "action": {"return": 405}},
              {"action": {"return": 204}},
              {"action": {"return": 500}}
            ]}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            // A leading allow-deny step still runs first, at the server level.
            "if ($unit_address_1 = 1) {",
            "return 403;",
            "location / {",
            "error_page 418 = $unit_step;",
            "recursive_error_pages on;",
            "set $unit_step @unit_step_1;",
            "if ($uri !~ \"^/api/\") {",
            "set $unit_step \"\";",
            "if ($request_method !~ \"^(?:GET$|HEAD$)\") {",
            "set $unit_step \"\";",
            "if ($unit_step) {",
            "return 418;",
            "set $unit_step @unit_step_2;",
            "if ($uri !~ \"^/api/\") {",
            "if ($unit_step) {",
            "return 418;",
            // The catch-all: entered unconditionally; no 404 after it.
            "set $unit_step @unit_step_3;",
            "return 418;",
            "}",
            "location @unit_step_1 {",
            "return 200;",
            "location @unit_step_2 {",
            "return 405;",
            "location @unit_step_3 {",
            "return 204;",
        ],
    );
    assert!(conf.contains(
        "# routes/4 and the steps after it: no request reaches them here, routes/3 takes every one"
    ));
    assert!(!conf.contains("return 500;") && !conf.contains("location ~"));
}

#[test]
fn a_route_reached_from_a_named_location_is_a_dispatch() {
    // A share's fallback is a named location, which can hold no location: the route it passes
    // to is a dispatch even though only URIs decide there.
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/main"}},
            "routes": {"main": [{"action": {"share": "/www$uri", "fallback": {"pass": "routes/app"}}}],
                       "app": [{"match": {"uri": "/a/*"}, "action": {"return": 201}},
                               {"match": {"uri": "/b/*"}, "action": {"return": 202}}]}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "location / {",
            "try_files $uri $uri/index.html @unit_fallback_1;",
            "location @unit_step_2 {",
            "return 201;",
            "location @unit_step_3 {",
            "return 202;",
            "location @unit_fallback_1 {",
            "error_page 418 = $unit_step;",
            "set $unit_step @unit_step_2;",
            "if ($uri !~ \"^/a/\") {",
            "set $unit_step @unit_step_3;",
            "if ($uri !~ \"^/b/\") {",
            "return 404;",
        ],
    );
}

#[test]
fn a_step_passing_to_a_route_lends_it_its_rewrite_but_not_its_headers() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/main"}},
            "routes": {"main": [{"match": {"uri": "/old/*"},
                                 "action": {"rewrite": "/new$uri", "pass": "routes/new", "response_headers": {"X-Outer": "o"}}}],
                       "new": [{"match": {"uri": "/new/a/*"}, "action": {"return": 201, "response_headers": {"X-Inner": "i"}}},
                               {"action": {"return": 202}}]}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "location ~ ^/old/ {",
            // No `break`: the dispatch after it tests the new URI.
            "rewrite ^ /new$uri;",
            "error_page 418 = $unit_step;",
            "set $unit_step @unit_step_1;",
            "if ($uri !~ \"^/new/a/\") {",
            "set $unit_step @unit_step_2;",
            "return 418;",
            "location @unit_step_1 {",
            "add_header X-Inner i always;",
            "return 201;",
            "location @unit_step_2 {",
            "return 202;",
        ],
    );
    assert!(!conf.contains("X-Outer o"));
    assert!(conf.contains(
        "# routes/main/0/action/response_headers: Unit adds those of the step that answers"
    ));
}

#[test]
fn host_and_scheme_in_a_nested_route_are_tests() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/main"}},
            "routes": {"main": [{"match": {"uri": "/api/*"}, "action": {"pass": "routes/api"}}],
                       "api": [{"match": {"host": ["api.example.com", "*.api.test"]}, "action": {"return": 201}},
                               {"match": {"scheme": "https"}, "action": {"return": 202}},
                               {"action": {"return": 203}}]}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "location ~ ^/api/ {",
            "set $unit_step @unit_step_1;",
            "if ($host !~ \"^(?:api\\.example\\.com$|.*\\.api\\.test$)\") {",
            "set $unit_step @unit_step_2;",
            "if ($scheme !~ \"^https$\") {",
            "set $unit_step @unit_step_3;",
            "return 418;",
        ],
    );
}

#[test]
fn scheme_under_forwarded_protocol_is_the_clients() {
    // Unit matches `scheme` against the trusted header's scheme: a listener behind a TLS
    // balancer redirects only requests that reached the balancer over http.
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/main",
                "forwarded": {"source": "10.0.0.0/8", "client_ip": "X-Forwarded-For", "protocol": "X-Forwarded-Proto"}}},
            "routes": {"main": [
                {"match": {"scheme": "http"}, "action": {"return": 301, "location": "https://$host$request_uri"}},
                {"match": {"uri": "/api/*"}, "action": {"pass": "routes/api"}},
                {"action": {"return": 200}}],
              "api": [{"match": {"scheme": "https"}, "action": {"return": 202}},
                      {"action": {"return": 203}}]}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "map \"$unit_trusted_1:$http_x_forwarded_proto\" $unit_scheme_1 {",
            "server {",
            "listen 80;",
            "wsgi_scheme $unit_scheme_1;",
            "if ($unit_scheme_1 ~ \"^http$\") {",
            "return 301 https://$host$request_uri;",
            "location ~ ^/api/ {",
            "if ($unit_scheme_1 !~ \"^https$\") {",
            "location / {",
            "return 200;",
            "location @unit_step_1 {",
            "return 202;",
        ],
    );
    assert!(!conf.contains("$scheme ~"), "{conf}");
}

#[test]
fn a_return_with_headers_keeps_them() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/gone"}, "action": {"return": 404, "response_headers": {"X-A": "1"}}},
                       {"action": {"return": 202, "response_headers": {"X-A": "1"}}}]}"#);
    assert!(notes.is_empty(), "{notes:?}");
    // 202 is no status nginx's add_header serves without `always`; Unit sets nothing on a 404.
    has(
        &conf,
        &[
            "return 404;",
            "location / {",
            "add_header X-A 1 always;",
            "return 202;",
        ],
    );
    assert_eq!(conf.matches("add_header").count(), 1, "{conf}");
}

#[test]
fn routes_nested_past_nginx_jump_bound_are_noted() {
    // Each route: a PUT answers 405, anything else goes on to the next route.
    let mut routes = Vec::new();
    for i in 0..12 {
        routes.push(format!(r#""r{i}": [{{"match": {{"method": "PUT"}}, "action": {{"return": 405}}}}, {{"action": {{"pass": "routes/r{}"}}}}]"#, i + 1));
    }
    routes.push(r#""r12": [{"action": {"return": 200}}]"#.to_owned());
    let json = format!(
        r#"{{"listeners": {{"*:80": {{"pass": "routes/r0"}}}}, "routes": {{{}}}}}"#,
        routes.join(", ")
    );
    let (_, notes) = run(&json);
    assert!(!notes.is_empty());
    assert!(
        notes.iter().all(|n| n.contains("at most 10 jumps")),
        "{notes:?}"
    );
    // routes/r0 is a server-level `if` and a location; each later route one jump more: the
    // 11th, the first past the bound, reaches the steps of routes/r11.
    assert!(notes[0].starts_with("routes/r11/0:"), "{notes:?}");
}

#[test]
fn nested_routes_become_nested_locations() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/main"}},
            "routes": {"main": [{"match": {"uri": "/api/*"}, "action": {"pass": "routes/api"}}],
                       "api": [{"match": {"uri": "/api/v1/*"}, "action": {"return": 201}}]}}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            "location ~ ^/api/ {",
            "location ~ ^/api/v1/ {",
            "return 201;",
            "}",
            "location ~ ^/ {",
            "return 404;",
            "}",
            "}",
            "location / {",
            "return 404;",
        ],
    );
}

#[test]
fn a_route_loop_is_refused_by_a_note() {
    let (_, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/a"}},
            "routes": {"a": [{"action": {"pass": "routes/a"}}]}}"#);
    assert!(notes[0].contains("passes back to itself"), "{notes:?}");
}

#[test]
fn process_settings_are_shared_by_every_app() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/a/*"}, "action": {"pass": "applications/a"}},
                       {"action": {"pass": "applications/b"}}],
            "applications": {
              "a": {"type": "python", "module": "a", "protocol": "wsgi", "threads": 8, "user": "www", "group": "www",
                    "environment": {"MODE": "a", "SHARED": "1"}, "limits": {"timeout": 10, "requests": 1000},
                    "home": "/srv/venv-a", "working_directory": "/srv/a"},
              "b": {"type": "python", "module": "b", "protocol": "asgi", "processes": 3,
                    "environment": {"MODE": "b"}, "limits": {"timeout": 5, "requests": 500}, "home": "/srv/venv-b"}}}"#);
    has(
        &conf,
        &[
            "user www www;",
            "worker_processes 3;",
            "working_directory /srv/a;",
            "env MODE=a;",
            "env SHARED=1;",
            "wsgi_python_home /srv/venv-a;",
            "wsgi_max_threads 8;",
            "wsgi_max_requests 500;",
            "wsgi_app a:application;",
            "wsgi_read_timeout 10s;",
            "asgi_app b:application;",
            "wsgi_read_timeout 5s;",
        ],
    );
    assert_eq!(
        note_paths(&notes),
        [
            "applications/b/environment/MODE",
            "applications/b/home",
            "applications/a/limits/requests",
        ]
    );
}

#[test]
fn unused_and_foreign_applications_are_noted() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "applications/php"}},
            "applications": {"php": {"type": "php", "root": "/www"},
                             "spare": {"type": "python", "module": "s", "protocol": "wsgi"}}}"#);
    has(&conf, &["location / {", "return 502;"]);
    assert!(notes[0].starts_with("applications/php: a \"php\" application"));
    assert!(notes[1].starts_with("applications/spare: no listener or route passes requests to it"));
}

#[test]
fn bad_input_names_the_json_path() {
    assert!(error("{").starts_with("not JSON:"));
    assert_eq!(
        error("[]"),
        "(the top level): expected an object, got an array"
    );
    assert_eq!(
        error(r#"{"listeners": {"*:80": {"pass": "routes/nope"}}, "routes": {}}"#),
        "listeners/*:80/pass: \"routes/nope\" names no route"
    );
    assert_eq!(
        error(r#"{"listeners": {"*:80": {"pass": "applications/x"}}}"#),
        "listeners/*:80/pass: there is no application \"x\""
    );
    assert_eq!(
        error(
            r#"{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"match": {"uri": 5}, "action": {"return": 200}}]}"#
        ),
        "routes/0/match/uri: expected a string or an array of strings, got 5"
    );
    assert_eq!(
        error(r#"{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"action": {"return": 200, "share": "/x"}}]}"#),
        "routes/0/action: an action has one of pass, proxy, return or share, not both \"return\" and \"share\""
    );
    assert_eq!(
        error(
            r#"{"listeners": {"*:80": {"pass": "applications/a"}}, "applications": {"a": {"type": "python", "protocol": "wsgi", "targets": {"t": {"module": "m"}}}}}"#
        ),
        "listeners/*:80/pass: the application \"a\" has targets: name one (applications/a/TARGET)"
    );
}

#[test]
fn listen_addresses_can_be_replaced() {
    let json = r#"{"listeners": {"*:80": {"pass": "routes"}, "*:81": {"pass": "routes"}}, "routes": [{"action": {"return": 200}}]}"#;
    let (conf, _) = translate(
        json,
        &[(Some("*:81".into()), "127.0.0.1:9000".into())],
        MODULE,
    )
    .unwrap();
    has(&conf, &["listen 80;", "listen 127.0.0.1:9000;"]);
    let e = translate(json, &[(None, "127.0.0.1:9000".into())], MODULE)
        .unwrap_err()
        .0;
    assert!(e.contains("has 2 listeners"), "{e}");
    let e = translate(json, &[(Some("*:82".into()), "1".into())], MODULE)
        .unwrap_err()
        .0;
    assert!(e.contains("no listener \"*:82\""), "{e}");
}

#[test]
fn body_buffer_temp_path_and_websocket_settings_are_nginx_directives() {
    let (conf, notes) = run(
        r#"{"applications": {"a": {"type": "python", "module": "a", "protocol": "asgi"}},
            "listeners": {"*:8000": {"pass": "applications/a"}},
            "settings": {"http": {"body_buffer_size": 131072, "body_temp_path": "/var/tmp/unit body",
              "websocket": {"read_timeout": 120, "keepalive_interval": 15, "max_frame_size": 65536,
                            "frame_limit": 1}}}}"#,
    );
    has(
        &conf,
        &[
            "client_body_buffer_size 131072;",
            "client_body_temp_path \"/var/tmp/unit body\";",
            "asgi_websocket_idle_timeout 120s;",
            "asgi_websocket_ping_interval 15s;",
            "asgi_app a:application;",
        ],
    );
    assert_eq!(
        note_paths(&notes),
        [
            "settings/http/websocket/max_frame_size",
            "settings/http/websocket/frame_limit",
        ]
    );
}

#[test]
fn a_share_ending_in_a_slash_serves_its_index_and_says_what_it_meant_before_1_26() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/static/*"}, "action": {"share": "/code/"}},
                       {"match": {"uri": "/docs/*"}, "action": {"share": ["/www/$host/", "/www/$uri"], "index": "main.html"}},
                       {"action": {"share": "/srv/www$uri"}}]}"#);
    has(
        &conf,
        &[
            "location ~ ^/static/ {",
            "root /;",
            "try_files /code/index.html =404;",
            "location ~ ^/docs/ {",
            "try_files /www/$host/main.html /www/$uri /www/$uri/main.html =404;",
            "location / {",
            "root /srv/www;",
        ],
    );
    assert_eq!(note_paths(&notes), ["routes/0/action/share"]);
    assert!(
        notes[0].contains("before 1.26") && notes[0].contains("write \"/code$uri\""),
        "{notes:?}"
    );
}

#[test]
fn python_types_are_read_as_unit_reads_them() {
    for t in [
        "python",
        "python 3",
        "python3",
        "python3.11",
        "python 3.11",
        "python 2.7",
    ] {
        let json = format!(
            r#"{{"listeners": {{"*:80": {{"pass": "applications/a"}}}},
                "applications": {{"a": {{"type": "{t}", "module": "m", "protocol": "wsgi"}}}}}}"#
        );
        let (conf, _) = run(&json);
        has(&conf, &["wsgi_app m:application;"]);
    }
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "applications/a"}},
            "applications": {"a": {"type": "pythonista", "module": "m"}}}"#);
    has(&conf, &["return 502;"]);
    assert_eq!(note_paths(&notes), ["applications/a"]);
}

#[test]
fn python_2_and_a_minor_version_are_noted() {
    let (_, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/old/*"}, "action": {"pass": "applications/old"}},
                       {"match": {"uri": "/new/*"}, "action": {"pass": "applications/new"}},
                       {"action": {"pass": "applications/any"}}],
            "applications": {"old": {"type": "python 2.7", "module": "m", "protocol": "wsgi"},
                             "new": {"type": "python3.12", "module": "m", "protocol": "wsgi"},
                             "any": {"type": "python 3", "module": "m", "protocol": "wsgi"}}}"#);
    // MODULE is not there: the Python it embeds is unknown.
    assert_eq!(
        note_paths(&notes),
        ["applications/old/type", "applications/new/type"]
    );
    assert!(notes[0].contains("must run on Python 3"), "{notes:?}");
    assert!(notes[1].contains("Python 3.12"), "{notes:?}");
}

#[test]
fn the_python_a_module_embeds_is_read_from_its_needed_library() {
    assert_eq!(version_numbers("3.11"), Some((3, 11)));
    assert_eq!(version_numbers("3.13t"), Some((3, 13)));
    assert_eq!(version_numbers("3"), None);
    let module = std::env::temp_dir().join(format!("from-unit-module-{}.so", std::process::id()));
    std::fs::write(&module, b"not an ELF file").unwrap();
    assert_eq!(embedded_python(module.to_str().unwrap()), None);
    std::fs::remove_file(&module).unwrap();
    assert_eq!(embedded_python("/nonexistent/module.so"), None);
}

#[test]
fn a_user_without_a_group_gets_its_primary_group() {
    let json = |user: &str| {
        format!(
            r#"{{"listeners": {{"*:80": {{"pass": "applications/a"}}}},
                "applications": {{"a": {{"type": "python", "module": "m", "protocol": "wsgi", "user": "{user}"}}}}}}"#
        )
    };
    let (conf, notes) = run(&json("root"));
    has(&conf, &["user root root;"]);
    assert!(notes.is_empty(), "{notes:?}");
    let (conf, notes) = run(&json("no-such-user-ngx-wsgi"));
    has(&conf, &["user no-such-user-ngx-wsgi;"]);
    assert_eq!(note_paths(&notes), ["applications/a/user"]);
    assert!(
        notes[0].contains("add a group \"no-such-user-ngx-wsgi\""),
        "{notes:?}"
    );
}

#[test]
fn a_listener_application_is_a_pass_to_it() {
    let (conf, notes) = run(
        r#"{"listeners": {"*:80": {"application": "a"}, "*:81": {"pass": "applications/b", "application": "a"}},
            "applications": {"a": {"type": "python", "module": "ma", "protocol": "wsgi"},
                             "b": {"type": "python", "module": "mb", "protocol": "wsgi"}}}"#,
    );
    has(
        &conf,
        &[
            "listen 80;",
            "location / {",
            "wsgi_app ma:application;",
            "listen 81;",
            "wsgi_app mb:application;",
        ],
    );
    assert_eq!(note_paths(&notes), ["listeners/*:80/application"]);
}

#[test]
fn a_rewrite_before_uri_keeps_one_slash_and_drops_its_query() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/v1/*"}, "action": {"rewrite": "/app/$uri", "return": 204}},
                       {"match": {"uri": "/v2/*"}, "action": {"rewrite": "/app/${uri}?x=1", "return": 204}},
                       {"match": {"uri": "/v3/*"}, "action": {"rewrite": "/$host/${uri}x", "return": 204}},
                       {"match": {"uri": "/v4/*"}, "action": {"rewrite": "/app${request_uri}", "return": 204}},
                       {"action": {"rewrite": "/a/../b%20c", "return": 204}}]}"#);
    has(
        &conf,
        &[
            "rewrite ^ /app$uri break;",
            "rewrite ^ /app$uri break;",
            "rewrite ^ \"/$host${uri}x\" break;",
            "rewrite ^ /app$request_uri break;",
            "rewrite ^ /a/../b%20c break;",
        ],
    );
    assert_eq!(
        note_paths(&notes),
        ["routes/3/action/rewrite", "routes/4/action/rewrite"]
    );
    assert!(notes[0].contains("$request_uri"), "{notes:?}");
    assert!(
        notes[1].contains("%XX") && notes[1].contains("`..`"),
        "{notes:?}"
    );
}

#[test]
fn a_proxy_to_units_control_socket_points_at_wsgi_status() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/status"}, "action": {"proxy": "http://unix:/var/run/control.unit.sock"}},
                       {"action": {"proxy": "http://127.0.0.1:8000"}}]}"#);
    has(
        &conf,
        &["proxy_pass http://unix:/var/run/control.unit.sock:;"],
    );
    assert_eq!(note_paths(&notes), ["routes/0/action/proxy"]);
    assert!(notes[0].contains("wsgi_status"), "{notes:?}");
}

const ECHO: &str = r#""applications": {"e": {"type": "python", "module": "echo", "protocol": "wsgi"},
                     "s": {"type": "python", "module": "s", "protocol": "asgi", "threads": 4}}"#;

#[test]
fn response_headers_replace_what_nginx_can_and_name_the_rest() {
    let (conf, notes) = run(&format!(
        r#"{{"listeners": {{"*:80": {{"pass": "routes"}}}},
            "routes": [
              {{"match": {{"uri": "/static/*"}}, "action": {{"share": "/www$uri",
                "response_headers": {{"Content-Type": "text/x-forced", "Cache-Control": "max-age=60"}}}}}},
              {{"match": {{"uri": "/srv"}}, "action": {{"return": 204,
                "response_headers": {{"Server": "mine", "date": "x", "X-A": "1"}}}}}},
              {{"match": {{"uri": "/p/*"}}, "action": {{"proxy": "http://127.0.0.1:9000",
                "response_headers": {{"Cache-Control": "no-store", "X-Gone": null}}}}}},
              {{"action": {{"pass": "applications/e", "response_headers": {{"Cache-Control": "no-store"}}}}}}
            ], {ECHO}}}"#
    ));
    has(
        &conf,
        &[
            "location ~ ^/static/ {",
            // nginx's own Content-Type for a file, replaced; it sets no Cache-Control.
            "types {}",
            "default_type text/x-forced;",
            // The status of a file (or its 404) is known only when it is answered.
            "add_header Cache-Control $unit_header_1 always;",
            "location ~ ^/srv$ {",
            "add_header X-A 1 always;",
            "return 204;",
            "location ~ ^/p/ {",
            // A proxied 4xx or 5xx keeps the upstream's field.
            "proxy_hide_header Cache-Control;",
            "add_header Cache-Control $unit_header_2 always;",
            "proxy_hide_header X-Gone;",
            "add_header X-Gone $unit_header_3 always;",
            "location / {",
            "add_header Cache-Control $unit_header_4 always;",
        ],
    );
    has(
        &conf,
        &[
            "map $status $unit_header_1 {",
            "volatile;",
            "~^[23] max-age=60;",
            "default \"\";",
            "map $status $unit_header_2 {",
            "volatile;",
            "~^[23] no-store;",
            "default $upstream_http_cache_control;",
            "map $status $unit_header_3 {",
            "volatile;",
            "~^[23] \"\";",
            "default $upstream_http_x_gone;",
            "map $status $unit_header_4 {",
            "volatile;",
            "~^[23] no-store;",
            "default \"\";",
        ],
    );
    assert!(!conf.contains("mine") && !conf.contains("add_header date"));
    assert_eq!(
        note_paths(&notes),
        [
            "routes/1/action/response_headers/Server",
            "routes/1/action/response_headers/date",
            "routes/3/action/response_headers",
            "applications/s"
        ]
    );
    assert!(
        notes[2].contains("Cache-Control: if the app sets"),
        "{notes:?}"
    );
}

#[test]
fn a_relative_location_is_sent_as_written() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [
              {"match": {"source": "10.0.0.0/8"}, "action": {"return": 301, "location": "/inside/"}},
              {"match": {"uri": "/ext"}, "action": {"return": 302, "location": "https://example.com/"}},
              {"action": {"return": 307, "location": "$uri/"}}]}"#);
    assert!(notes.is_empty(), "{notes:?}");
    has(
        &conf,
        &[
            // `absolute_redirect` cannot go into a server-level `if`: a location instead.
            "if ($unit_address_1 = 0) {",
            "location @unit_step_1 {",
            "absolute_redirect off;",
            "return 301 /inside/;",
            "location @unit_step_2 {",
            "return 302 https://example.com/;",
            "location @unit_step_3 {",
            "absolute_redirect off;",
            "return 307 $uri/;",
        ],
    );
    assert_eq!(conf.matches("absolute_redirect off;").count(), 2);
}

#[test]
fn a_step_for_requests_without_host_has_its_server() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"host": ""}, "action": {"return": 201}}, {"action": {"return": 202}}]}"#);
    assert!(notes.is_empty(), "{notes:?}");
    // The other hosts' server, nginx's default, leaves the empty name to the step's.
    has(
        &conf,
        &[
            "server_name _;",
            "return 202;",
            "server_name \"\";",
            "return 201;",
        ],
    );
}

#[test]
fn host_wildcards_nginx_lacks_are_regex_server_names() {
    let (conf, _) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"host": "www.*.COM"}, "action": {"return": 201}},
                       {"match": {"host": ["*.example.org", "*"]}, "action": {"return": 202}}]}"#);
    has(
        &conf,
        &[
            "server_name ~^www\\..*\\.com$;",
            "return 201;",
            "server_name *.example.org ~^.*$;",
            "return 202;",
        ],
    );
}

#[test]
fn host_regexes_with_capitals_keep_their_case() {
    let (conf, _) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"host": "~^Api"}, "action": {"return": 201}},
                       {"match": {"host": "~^[a-z]+\\.test$"}, "action": {"return": 202}}]}"#);
    // Unit compiles them as written over the lowercased host: `^Api` never matches.
    has(
        &conf,
        &[
            "server_name ~(?-i)^Api;",
            "return 201;",
            "server_name ~^[a-z]+\\.test$;",
            "return 202;",
        ],
    );
}

#[test]
fn zero_limits_are_unit_defaults_and_zero_processes_are_refused() {
    let (conf, _) = run(r#"{"listeners": {"*:80": {"pass": "applications/e"}},
            "applications": {"e": {"type": "python", "module": "echo", "protocol": "wsgi",
                                    "limits": {"requests": 0, "timeout": 0}}}}"#);
    assert!(!conf.contains("wsgi_max_requests") && !conf.contains("wsgi_read_timeout"));
    for (option, path) in [
        (r#""processes": 0"#, "applications/e/processes"),
        (r#""processes": {"max": 0}"#, "applications/e/processes/max"),
        (r#""threads": 0"#, "applications/e/threads"),
    ] {
        let e = error(&format!(
            r#"{{"listeners": {{"*:80": {{"pass": "applications/e"}}}},
                "applications": {{"e": {{"type": "python", "module": "echo", {option}}}}}}}"#
        ));
        assert!(
            e.starts_with(&format!("{path}: expected a whole number from 1")),
            "{e}"
        );
    }
}

#[test]
fn an_asgi_apps_threads_set_no_wsgi_max_threads() {
    let (conf, notes) = run(&format!(
        r#"{{"listeners": {{"*:80": {{"pass": "applications/s"}}}}, {ECHO}}}"#
    ));
    assert!(
        !lines(&conf)
            .iter()
            .any(|l| l.starts_with("wsgi_max_threads")),
        "{conf}"
    );
    assert!(notes
        .iter()
        .any(|n| n.starts_with("applications/s/threads: ASGI")));
}

#[test]
fn a_long_chain_of_routes_is_named_for_its_depth() {
    let mut routes = Vec::new();
    for i in 0..30 {
        routes.push(format!(
            r#""r{i}": [{{"match": {{"uri": "/{i}/*"}}, "action": {{"pass": "routes/r{}"}}}}, {{"action": {{"return": 200}}}}]"#,
            i + 1
        ));
    }
    routes.push(r#""r30": [{"action": {"return": 201}}]"#.to_owned());
    let json = format!(
        r#"{{"listeners": {{"*:80": {{"pass": "routes/r0"}}}}, "routes": {{{}}}}}"#,
        routes.join(", ")
    );
    let (_, notes) = run(&json);
    assert!(
        notes[0].starts_with("routes/r16/0/action/pass: \"routes/r17\" is the 18th route"),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("back to itself")),
        "{notes:?}"
    );
    // The routes past the cut are not called unreachable as such: Unit reaches them.
    let past: Vec<&String> = notes
        .iter()
        .filter(|n| n.starts_with("routes/r2"))
        .collect();
    assert!(!past.is_empty(), "{notes:?}");
    assert!(
        past.iter().all(|n| n.contains("within the 17 levels")),
        "{notes:?}"
    );
}

#[test]
fn differing_users_read_as_words() {
    let (_, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"uri": "/b/*"}, "action": {"pass": "applications/b"}}, {"action": {"pass": "applications/a"}}],
            "applications": {"a": {"type": "python", "module": "a", "protocol": "wsgi", "user": "nobody", "group": "nogroup"},
                             "b": {"type": "python", "module": "b", "protocol": "wsgi", "user": "root", "group": "root"}}}"#);
    assert_eq!(notes, ["applications/b/user: every worker runs as nginx's one `user`: user \"nobody\" with group \"nogroup\" of application \"a\" is used, not user \"root\" with group \"root\""]);
}

#[test]
fn routes_no_listener_reaches_are_named() {
    let (_, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes/a"}},
            "routes": {"a": [{"action": {"return": 200}}], "unused": [{"action": {"return": 201}}]}}"#);
    assert_eq!(note_paths(&notes), ["routes/unused"]);
    let (_, notes) = run(r#"{"routes": [{"action": {"return": 403}}]}"#);
    assert_eq!(note_paths(&notes), ["routes"]);
}

#[test]
fn odd_names_and_addresses_are_noted_or_translated() {
    let (conf, notes) = run(r#"{"listeners": {"*:80": {"pass": "routes"}},
            "routes": [{"match": {"headers": {"X_Custom": "1"}, "source": ["10.0.0.1:*", "10.0.0.1-10.0.0.9"]},
                        "action": {"return": 200}}],
            "settings": {"http": {"static": {"mime_types": {"text/x-custom": [".cst", "Makefile"]}}}}}"#);
    has(&conf, &["text/x-custom cst;", "10.0.0.1 1;"]);
    assert!(!conf.contains("Makefile"));
    assert_eq!(
        note_paths(&notes),
        [
            "routes/0/match/headers/X_Custom",
            "routes/0/match/source/1",
            "settings/http/static/mime_types/text/x-custom/1"
        ]
    );
    assert!(notes[0].contains("underscores_in_headers on;"));
    assert!(notes[1].contains("FROM-TO ranges only in a block"));
}

#[test]
fn regexes_past_nginx_token_limit_are_noted_and_never_match() {
    let long = "x".repeat(2000);
    let (conf, notes) = run(&format!(
        r#"{{"listeners": {{"*:80": {{"pass": "routes"}}}},
            "routes": [{{"match": {{"arguments": {{"t": "{long}"}}}}, "action": {{"return": 201}}}},
                       {{"match": {{"uri": "/{long}{long}{long}"}}, "action": {{"return": 202}}}},
                       {{"action": {{"return": 299}}}}]}}"#
    ));
    assert_eq!(
        note_paths(&notes),
        ["routes/0/match/arguments", "routes/1/match/uri"]
    );
    assert!(notes[0].contains("4096 bytes"), "{notes:?}");
    assert!(conf.lines().all(|l| l.len() < 4000), "{conf}");
    assert!(
        conf.contains("$uri ~ \"(?!)\"") && conf.contains("location ~ (?!) {"),
        "{conf}"
    );
}
