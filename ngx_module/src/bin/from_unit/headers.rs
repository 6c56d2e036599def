//! `response_headers`: Unit replaces a field the response has already (and deletes one given
//! `null`), where nginx's `add_header` adds one more. So a field is written the way that replaces
//! it for what answers: `proxy_hide_header` before it for a proxy, `default_type` for the
//! Content-Type nginx gives a file or a `return`, `add_header` where nginx itself sets nothing
//! of that name (or replaces it: ETag, Last-Modified); what an app may set too is noted.
//!
//! Unit sets them on every 2xx and 3xx response and on no other; nginx's `add_header` on ten of
//! those statuses unless `always`. So a status only known when the response is (a file, a proxy,
//! an app) takes a `map` of `$status`, whose empty value `add_header` adds nothing for, and a
//! `return` its known status.

use super::json::{At, BadInput, Read};
use super::out::Out;
use super::pattern::token;
use super::shared::Shared;
use super::variables::variables;

/// What answers the request, which decides the fields the response has before Unit's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Share,
    /// `location`: whether nginx writes a Location of its own.
    Return {
        location: bool,
        status: u64,
    },
    Proxy,
    App,
}

/// Whether Unit sets `response_headers` on a response of this status.
fn sets_headers(status: u64) -> bool {
    (200..400).contains(&status)
}

/// The variable of the proxied response's header `name`, where nginx has one.
fn upstream_var(name: &str) -> Option<String> {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        .then(|| {
            format!(
                "$upstream_http_{}",
                name.to_ascii_lowercase().replace('-', "_")
            )
        })
}

pub fn write(at: &At<'_>, answer: Answer, out: &mut Out, shared: &mut Shared) -> Read<()> {
    let tok = |v: &str, a: &At<'_>| token(v).map_err(|e| BadInput(format!("{}: {e}", a.path())));
    if let Answer::Return { status, .. } = answer {
        if !sets_headers(status) {
            return Ok(());
        }
    }
    let mut duplicated = Vec::new();
    for (name, v) in at.members()? {
        let lower = name.to_ascii_lowercase();
        if matches!(lower.as_str(), "date" | "server" | "content-length") {
            shared.notes.add(v.path(), "Unit cannot set Date, Server or Content-Length (it sends its own), and nor can nginx's add_header without sending two: left out");
            continue;
        }
        let name_tok = tok(name, &v)?;
        // For a proxy, what the upstream sent stands on the statuses Unit leaves alone.
        let kept = match answer {
            Answer::Proxy => match upstream_var(name) {
                Some(var) => var,
                None => {
                    shared.notes.add(v.path(), "a name nginx has no $upstream_http_ variable for: the upstream's field is hidden on every status, not on 2xx and 3xx alone");
                    String::new()
                }
            },
            // nginx's ETag and Last-Modified are replaced by add_header, and taken out by an
            // empty one: on other statuses they are given back their own value.
            _ if matches!(lower.as_str(), "etag" | "last-modified") => {
                format!("$sent_http_{}", lower.replace('-', "_"))
            }
            _ => String::new(),
        };
        if v.value.is_null() {
            if answer == Answer::Proxy {
                out.line(&format!("proxy_hide_header {name_tok};"));
                if !kept.is_empty() {
                    let var = shared.status_map("", &kept);
                    out.line(&format!("add_header {name_tok} {var} always;"));
                }
            } else {
                shared.notes.add(v.path(), "nginx cannot take a header out of a response it or an app makes (only proxy_hide_header for proxied ones)");
            }
            continue;
        }
        let value = match variables(v.str()?) {
            Ok(text) => text,
            Err(e) => {
                shared.notes.add(v.path(), &e);
                continue;
            }
        };
        if value.is_empty() {
            shared.notes.add(v.path(), "nginx's add_header adds no field of an empty value, where Unit sends one (and replaces the response's own)");
            continue;
        }
        let value_tok = tok(&value, &v)?;
        let fixed = !value.contains('$');
        match (answer, lower.as_str()) {
            (Answer::Proxy, _) => {
                out.line(&format!("proxy_hide_header {name_tok};"));
            }
            // An empty `types` leaves every file, and `return`'s text, default_type's type
            // (nginx's own error pages, which Unit would not touch, keep text/html).
            (Answer::Share | Answer::Return { .. }, "content-type") if fixed => {
                out.line("types {}");
                out.line(&format!("default_type {value_tok};"));
                continue;
            }
            (Answer::App, _)
            | (Answer::Share | Answer::Return { .. }, "content-type")
            | (Answer::Share, "accept-ranges")
            | (Answer::Return { location: true, .. }, "location") => {
                duplicated.push(name.to_owned())
            }
            _ => {}
        }
        let value = match answer {
            Answer::Return { .. } => value_tok,
            _ => shared.status_map(&value_tok, &kept),
        };
        out.line(&format!("add_header {name_tok} {value} always;"));
    }
    if !duplicated.is_empty() {
        let what = if answer == Answer::App {
            "if the app sets it too, the response carries both: Unit replaces the app's value, nginx's add_header adds one (the module cannot hide an app's header)"
        } else {
            "nginx sets it itself here, and add_header adds a second one where Unit replaces it"
        };
        shared
            .notes
            .add(at.path(), &format!("{}: {what}", duplicated.join(", ")));
    }
    Ok(())
}
