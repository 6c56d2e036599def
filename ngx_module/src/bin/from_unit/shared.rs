//! What the server blocks being written share at the http level: the `geo`, `map` and
//! `upstream` blocks beside them, the notes, and what they used.

use std::collections::BTreeSet;

use super::conditions::HttpLevel;
use super::out::{Notes, Out};

/// What the servers need beside them in the http block, and what they used.
#[derive(Default)]
pub struct Shared {
    /// `geo`, `map` and `upstream` blocks.
    pub http: Out,
    pub notes: Notes,
    /// Applications some location serves.
    pub used_apps: BTreeSet<String>,
    /// Routes some listener reaches, by name (`""` for a `routes` array).
    pub used_routes: BTreeSet<String>,
    /// A chain of passes was cut at the depth the tool writes: the routes past it were not
    /// reached, and may be reachable in Unit.
    pub chain_cut: bool,
    pub(super) counter: usize,
    pub(super) upstreams_written: BTreeSet<String>,
    /// `geo` variables by what they test, so that a route read for several listeners has one.
    geos: Vec<(String, String)>,
    /// `map $status` variables by their two values, likewise.
    status_maps: Vec<((String, String), String)>,
}

impl Shared {
    /// A variable that is `value` (a configuration token) on a 2xx or 3xx response and
    /// `otherwise` on any other: `response_headers`' values (see [`super::headers`]).
    pub fn status_map(&mut self, value: &str, otherwise: &str) -> String {
        let key = (value.to_owned(), otherwise.to_owned());
        if let Some((_, name)) = self.status_maps.iter().find(|(k, _)| *k == key) {
            return name.clone();
        }
        self.counter += 1;
        let name = format!("$unit_header_{}", self.counter);
        self.http.open(&format!("map $status {name}"));
        // Evaluated anew where it is read: the status changes over a request's life.
        self.http.line("volatile;");
        let token = |t: &str| {
            if t.is_empty() {
                "\"\"".to_owned()
            } else {
                t.to_owned()
            }
        };
        self.http.line(&format!("~^[23] {};", token(value)));
        self.http.line(&format!("default {};", token(otherwise)));
        self.http.close();
        self.status_maps.push((key, name.clone()));
        name
    }
}

impl HttpLevel for Shared {
    fn geo(&mut self, source: &str, entries: &[(String, bool)], default: bool) -> String {
        let key = format!("{source} {entries:?} {default}");
        if let Some((_, name)) = self.geos.iter().find(|(k, _)| *k == key) {
            return name.clone();
        }
        self.counter += 1;
        let name = format!("$unit_address_{}", self.counter);
        self.http.open(&format!("geo {source} {name}"));
        self.http.line(&format!("default {};", u8::from(default)));
        for (address, met) in entries {
            self.http.line(&format!("{address} {};", u8::from(*met)));
        }
        self.http.close();
        self.geos.push((key, name.clone()));
        name
    }

    fn variable(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("$unit_{what}_{}", self.counter)
    }

    fn untranslated(&mut self, at: &str, reason: &str) {
        self.notes.add(at, reason);
    }
}
