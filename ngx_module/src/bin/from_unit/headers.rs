//! `response_headers`: Unit replaces a field the response has already (and deletes one given
//! `null`), where nginx's `add_header` adds one more. So a field is written the way that replaces
//! it for what answers: `proxy_hide_header` before it for a proxy, `default_type` for the
//! Content-Type nginx gives a file or a `return`, `add_header` where nginx itself sets nothing
//! of that name (or replaces it: ETag, Last-Modified); what an app may set too is noted.

use super::json::{At, BadInput, Read};
use super::out::{Notes, Out};
use super::pattern::token;
use super::routes::variables;

/// What answers the request, which decides the fields the response has before Unit's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Share,
    /// `location`: whether nginx writes a Location of its own.
    Return {
        location: bool,
    },
    Proxy,
    App,
}

pub fn write(at: &At<'_>, answer: Answer, out: &mut Out, notes: &mut Notes) -> Read<()> {
    let tok = |v: &str, a: &At<'_>| token(v).map_err(|e| BadInput(format!("{}: {e}", a.path())));
    let mut duplicated = Vec::new();
    for (name, v) in at.members()? {
        let lower = name.to_ascii_lowercase();
        if matches!(lower.as_str(), "date" | "server" | "content-length") {
            notes.add(v.path(), "Unit cannot set Date, Server or Content-Length (it sends its own), and nor can nginx's add_header without sending two: left out");
            continue;
        }
        if v.value.is_null() {
            if answer == Answer::Proxy {
                out.line(&format!("proxy_hide_header {};", tok(name, &v)?));
            } else {
                notes.add(v.path(), "nginx cannot take a header out of a response it or an app makes (only proxy_hide_header for proxied ones)");
            }
            continue;
        }
        let value = match variables(v.str()?) {
            Ok(text) => text,
            Err(e) => {
                notes.add(v.path(), &e);
                continue;
            }
        };
        let fixed = !value.contains('$');
        match (answer, lower.as_str()) {
            (Answer::Proxy, _) => {
                out.line(&format!("proxy_hide_header {};", tok(name, &v)?));
            }
            // An empty `types` leaves every file, and `return`'s text, default_type's type.
            (Answer::Share | Answer::Return { .. }, "content-type") if fixed => {
                out.line("types {}");
                out.line(&format!("default_type {};", tok(&value, &v)?));
                continue;
            }
            (Answer::App, _)
            | (Answer::Share | Answer::Return { .. }, "content-type")
            | (Answer::Share, "accept-ranges")
            | (Answer::Return { location: true }, "location") => duplicated.push(name.to_owned()),
            _ => {}
        }
        out.line(&format!(
            "add_header {} {};",
            tok(name, &v)?,
            tok(&value, &v)?
        ));
    }
    if !duplicated.is_empty() {
        let what = if answer == Answer::App {
            "if the app sets it too, the response carries both: Unit replaces the app's value, nginx's add_header adds one (the module cannot hide an app's header)"
        } else {
            "nginx sets it itself here, and add_header adds a second one where Unit replaces it"
        };
        notes.add(at.path(), &format!("{}: {what}", duplicated.join(", ")));
    }
    Ok(())
}
