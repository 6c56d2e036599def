//! A route step's `match`: the URI becomes the location's regex (or, in a route's dispatch, a
//! test like the others); `host` and `scheme` choose the server blocks the step goes into; every
//! other condition becomes a test that nginx's `if` (or a `geo` variable for addresses)
//! evaluates.

use super::encoded;
use super::json::{At, BadInput, Read};
use super::out::Out;
use super::pattern::{self, Pattern, PatternSet};

/// A condition nginx checks with `if`: `when_met` is true when the request meets it,
/// `when_failed` when it does not, once the rewrite module has run `prelude` (which sets the
/// variables a condition made of several reads).
#[derive(Default)]
pub struct Test {
    pub prelude: Out,
    pub when_met: String,
    pub when_failed: String,
}

/// What `match` asks, sorted by how nginx answers it.
#[derive(Default)]
pub struct Match {
    pub uri: PatternSet,
    pub host: Option<PatternSet>,
    pub scheme: Option<PatternSet>,
    pub tests: Vec<Test>,
    /// The `host` condition's path, for notes.
    pub host_at: String,
}

impl Match {
    /// `host` and `scheme` as tests like the others, for a route reached from another route's
    /// step: its server block is chosen already. nginx's `$host` is the Host header's name,
    /// lowercased, without the port, as Unit's `host` compares it.
    pub fn host_and_scheme_as_tests(&mut self, scheme_var: &str) -> Read<()> {
        if let Some(set) = self.host.take() {
            // Unit lowercases its wildcard patterns, as nginx's $host is.
            let set = recased(set, str::to_ascii_lowercase)?;
            self.tests.extend(regex_test("$host", &set)?);
        }
        self.scheme_as_test(scheme_var)
    }

    /// `scheme` as a test of `var` (the scheme of a request, where no server block knows it).
    pub fn scheme_as_test(&mut self, var: &str) -> Read<()> {
        if let Some(set) = self.scheme.take() {
            self.tests.extend(regex_test(var, &set)?);
        }
        Ok(())
    }
}

/// Where `geo` blocks (address conditions) go: nginx wants them at the http level.
pub trait HttpLevel {
    fn geo(&mut self, source: &str, entries: &[(String, bool)], default: bool) -> String;
    /// A variable of its own for a test's prelude (`$unit_WHAT_N`).
    fn variable(&mut self, what: &str) -> String;
    fn untranslated(&mut self, at: &str, reason: &str);
}

pub fn patterns(at: &At<'_>, decode: bool) -> Read<PatternSet> {
    let mut set = PatternSet::default();
    for (text, item) in at.strings()? {
        let (negated, p) =
            pattern::parse(&text, decode).map_err(|e| BadInput(format!("{}: {e}", item.path())))?;
        if negated {
            set.negative.push(p);
        } else {
            set.positive.push(p);
        }
    }
    Ok(set)
}

fn quoted_regex(re: &str) -> Read<String> {
    let t = pattern::token(re).map_err(BadInput)?;
    Ok(if t.starts_with('"') {
        t
    } else {
        format!("\"{t}\"")
    })
}

/// `$var ~ "re"` and its opposite; `None` when the patterns match every value.
fn regex_test(var: &str, set: &PatternSet) -> Read<Option<Test>> {
    let Some(re) = pattern::set_regex(set) else {
        return Ok(None);
    };
    Ok(Some(test_of(var, &re)?))
}

fn test_of(var: &str, re: &str) -> Read<Test> {
    let re = quoted_regex(re)?;
    Ok(Test {
        when_met: format!("{var} ~ {re}"),
        when_failed: format!("{var} !~ {re}"),
        ..Test::default()
    })
}

/// The URI's patterns as a test (where no location's regex can say them).
pub fn uri_test(set: &PatternSet) -> Read<Option<Test>> {
    regex_test("$uri", set)
}

/// A named argument's, cookie's or header's test. Unit's patterns never match a field the
/// request does not have, not even `*` or a negation; nginx's variable of a missing field is
/// empty, so an empty value counts as a missing one (where the patterns would admit it).
fn field_test(var: &str, set: &PatternSet) -> Read<Test> {
    let re = match pattern::set_regex(set) {
        Some(re) if !pattern::admits_empty(set) => re,
        Some(re) => match re.strip_prefix('^') {
            Some(rest) => format!("^(?=.){rest}"),
            None => format!("^(?=.).*?(?:{re})"),
        },
        None => "^(?=.)".to_owned(),
    };
    test_of(var, &re)
}

/// nginx's variable of a request header (`X-Real-IP` is `$http_x_real_ip`).
fn header_var(name: &str) -> String {
    format!("$http_{}", name.to_ascii_lowercase().replace('-', "_"))
}

/// Whether `$arg_NAME` or `$cookie_NAME` reads this name (nginx's variable names end at any
/// other character).
fn is_nginx_var_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Unit compares a header's values without case, but compiles its `~` regexes as written: the
/// wildcard patterns alone are made caseless.
fn caseless_wildcards(set: &PatternSet) -> PatternSet {
    let caseless = |p: &Pattern| match p {
        // Without letters (`*`), case is moot, and the plain form reads better.
        Pattern::Wildcard { text, regex } if regex.contains(|c: char| c.is_ascii_alphabetic()) => {
            Pattern::Wildcard {
                text: text.clone(),
                regex: format!("(?i:{regex})"),
            }
        }
        p => p.clone(),
    };
    PatternSet {
        positive: set.positive.iter().map(caseless).collect(),
        negative: set.negative.iter().map(caseless).collect(),
    }
}

/// The set with its wildcard patterns (not its `~` regexes, which Unit compiles as written) in
/// the case `case` gives them.
fn recased(mut set: PatternSet, case: fn(&str) -> String) -> Read<PatternSet> {
    for p in set.positive.iter_mut().chain(set.negative.iter_mut()) {
        if let Pattern::Wildcard { text, .. } = p {
            *p = pattern::parse(&case(text), false).map_err(BadInput)?.1;
        }
    }
    Ok(set)
}

/// `headers`' test of one header.
fn header_test(name: &str, at: &At<'_>, http: &mut dyn HttpLevel) -> Read<Option<Test>> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        http.untranslated(
            at.path(),
            "a name nginx has no variable for; the step is written without it",
        );
        return Ok(None);
    }
    if name.contains('_') {
        http.untranslated(at.path(), "nginx drops request headers whose name has \"_\" unless `underscores_in_headers on;` is in the server, and its $http_ variable reads a \"-\" in the name as well: add that directive, and know that a header spelt with \"-\" matches too");
    }
    let set = caseless_wildcards(&patterns(at, false)?);
    Ok(Some(field_test(&header_var(name), &set)?))
}

/// `arguments`' test of one argument, over the whole query (see [`encoded`]).
fn argument_test(name: &str, at: &At<'_>, http: &mut dyn HttpLevel) -> Read<Option<Test>> {
    // Unit decodes the name as it decodes the request's, and refuses what will not decode.
    if pattern::decode_plus(name).is_none() {
        return Err(BadInput(format!(
            "{}: {name:?}: a malformed %-escape in an argument's name, which Unit refuses",
            at.path()
        )));
    }
    let set = patterns(at, true)?;
    if let Some(re) = encoded::argument(name, &set) {
        return Ok(Some(test_of("$args", &re)?));
    }
    first_occurrence_test(name, "$arg_", &set, at, http)
}

/// `cookies`' test of one cookie, over the whole Cookie header.
fn cookie_test(name: &str, at: &At<'_>, http: &mut dyn HttpLevel) -> Read<Option<Test>> {
    let set = patterns(at, false)?;
    if let Some(re) = encoded::cookie(name, &set) {
        return Ok(Some(test_of("$http_cookie", &re)?));
    }
    first_occurrence_test(name, "$cookie_", &set, at, http)
}

/// A `~` regex runs on one value in Unit, which a regex over the whole raw string cannot
/// confine itself to: nginx's variable of the first occurrence is the nearest.
fn first_occurrence_test(
    name: &str,
    prefix: &str,
    set: &PatternSet,
    at: &At<'_>,
    http: &mut dyn HttpLevel,
) -> Read<Option<Test>> {
    if !is_nginx_var_name(name) {
        http.untranslated(
            at.path(),
            "a name nginx has no variable for, with a ~regex; the step is written without it",
        );
        return Ok(None);
    }
    let decoded = if prefix == "$arg_" {
        ", raw (Unit decodes %XX and +)"
    } else {
        ""
    };
    http.untranslated(at.path(), &format!("with a ~regex, nginx tests {prefix}{name}: the first occurrence only, its name in any case{decoded}, where Unit wants every occurrence of exactly this name to match"));
    Ok(Some(field_test(&format!("{prefix}{name}"), set)?))
}

/// `arguments`, `cookies`, `headers`: one object (every name must match) becomes one test per
/// name; an array of objects (one of them must match) one test whose prelude tries each object.
fn named_tests(
    at: &At<'_>,
    test: fn(&str, &At<'_>, &mut dyn HttpLevel) -> Read<Option<Test>>,
    tests: &mut Vec<Test>,
    http: &mut dyn HttpLevel,
) -> Read<()> {
    let objects = match at.value {
        serde_json::Value::Array(_) => at.items()?,
        _ => vec![*at],
    };
    let mut each = Vec::new();
    for object in &objects {
        let mut all = Vec::new();
        for (name, patterns_at) in object.members()? {
            if name.is_empty() {
                return Err(BadInput(format!(
                    "{}: an empty name, which Unit refuses",
                    object.path()
                )));
            }
            all.extend(test(name, &patterns_at, http)?);
        }
        if all.is_empty() {
            // An empty object: Unit's every request matches it, and so the whole condition.
            return Ok(());
        }
        each.push(all);
    }
    match each.len() {
        0 => {}
        1 => tests.append(&mut each[0]),
        _ => {
            let any = http.variable("any");
            let all = http.variable("all");
            let mut prelude = Out::default();
            prelude.line(&format!("set {any} \"\";"));
            for object in &each {
                prelude.line(&format!("set {all} 1;"));
                for t in object {
                    prelude.open(&format!("if ({})", t.when_failed));
                    prelude.line(&format!("set {all} \"\";"));
                    prelude.close();
                }
                prelude.open(&format!("if ({all})"));
                prelude.line(&format!("set {any} 1;"));
                prelude.close();
            }
            tests.push(Test {
                prelude,
                when_met: any.clone(),
                when_failed: format!("{any} = \"\""),
            });
        }
    }
    Ok(())
}

/// `source`/`destination`: address patterns through a `geo` variable.
fn address_test(at: &At<'_>, var: &str, http: &mut dyn HttpLevel) -> Read<Option<Test>> {
    let mut entries = Vec::new();
    let mut any_positive = false;
    let mut every = None;
    for (text, item) in at.strings()? {
        let (negated, body) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        if body == "*" || body == "*:*" {
            // geo's `default` is the whole address space already: a second entry for it is a
            // duplicate network to nginx.
            every = Some(!negated);
            continue;
        }
        // `ADDR:*` is any port of ADDR, which is all geo knows of it.
        let body = match body.strip_suffix(":*") {
            Some(a) if a.contains('.') && !a.contains(':') => a,
            Some(a) if a.starts_with('[') && a.ends_with(']') => &a[1..a.len() - 1],
            _ => body,
        };
        let plain = body
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '/'))
            && body.contains(['.', ':']);
        let with_port = body.starts_with('[') || (body.contains('.') && body.contains(':'));
        if !plain || with_port || body.contains('-') {
            http.untranslated(item.path(), "geo compares the address alone (no port, no \"unix\") and takes FROM-TO ranges only in a block whose every entry is one (IPv4 only); the step is written without this pattern");
            continue;
        }
        any_positive |= !negated;
        entries.push((body.to_owned(), !negated));
    }
    let default = every.unwrap_or(!any_positive);
    if entries.is_empty() && default {
        return Ok(None);
    }
    let name = http.geo(var, &entries, default);
    Ok(Some(Test {
        when_met: format!("{name} = 1"),
        when_failed: format!("{name} = 0"),
        ..Test::default()
    }))
}

pub fn read(at: Option<At<'_>>, http: &mut dyn HttpLevel) -> Read<Match> {
    let mut m = Match::default();
    let Some(at) = at else {
        return Ok(m);
    };
    for (key, value) in at.members()? {
        let before = m.tests.len();
        match key {
            "uri" => {
                m.uri = patterns(&value, true)?;
                if pattern::set_regex(&m.uri).is_some_and(|re| re.len() > MAX_TOKEN) {
                    http.untranslated(value.path(), TOO_LONG);
                    m.uri = never();
                }
            }
            "host" => {
                m.host = Some(patterns(&value, false)?);
                m.host_at = value.path().to_owned();
            }
            "scheme" => {
                let set = patterns(&value, false)?;
                for p in set.positive.iter().chain(&set.negative) {
                    match p {
                        Pattern::Wildcard { text, .. } if text == "http" || text == "https" => {}
                        _ => return Err(value.wrong("\"http\" or \"https\"")),
                    }
                }
                m.scheme = Some(set);
            }
            "method" => {
                // Unit upper-cases a method's wildcard patterns and compares them with case
                // (nginx refuses a method in lower case anyway); a `~` regex is as written.
                let set = recased(patterns(&value, false)?, str::to_ascii_uppercase)?;
                m.tests.extend(regex_test("$request_method", &set)?);
            }
            "query" => {
                let set = patterns(&value, true)?;
                match encoded::query(&set) {
                    Some(re) => m.tests.push(test_of("$args", &re)?),
                    None => {
                        http.untranslated(value.path(), "a ~regex runs on the decoded query in Unit (%XX and + decoded), on the raw one ($args) in nginx");
                        m.tests.extend(regex_test("$args", &set)?);
                    }
                }
            }
            "arguments" => named_tests(&value, argument_test, &mut m.tests, http)?,
            "cookies" => named_tests(&value, cookie_test, &mut m.tests, http)?,
            "headers" => named_tests(&value, header_test, &mut m.tests, http)?,
            "source" => m.tests.extend(address_test(&value, "$remote_addr", http)?),
            "destination" => m.tests.extend(address_test(&value, "$server_addr", http)?),
            _ => http.untranslated(
                value.path(),
                "a condition unknown to this tool; the step is written without it",
            ),
        }
        let added = &m.tests[before..];
        let too_long = added.iter().any(|t| {
            std::iter::once(t.when_met.as_str())
                .chain(t.prelude.text.lines())
                .any(|line| line.len() > MAX_TOKEN)
        });
        if too_long {
            http.untranslated(value.path(), TOO_LONG);
            m.tests.truncate(before);
            m.tests.push(test_of("$uri", encoded::NEVER)?);
        }
    }
    Ok(m)
}

/// nginx refuses a configuration token of 4096 bytes or more (its read buffer); a line a little
/// shorter than that holds every token of it.
const MAX_TOKEN: usize = 4000;

const TOO_LONG: &str = "its regex would be longer than the 4096 bytes nginx takes in one configuration token; the step is written never to match";

/// URI patterns no URI meets.
fn never() -> PatternSet {
    PatternSet {
        positive: vec![Pattern::Regex(encoded::NEVER.to_owned())],
        negative: Vec::new(),
    }
}

/// Whether a set of scheme patterns admits `scheme`.
pub fn scheme_admits(set: &PatternSet, scheme: &str) -> bool {
    let is = |p: &Pattern| matches!(p, Pattern::Wildcard { text, .. } if text == scheme);
    (set.positive.is_empty() || set.positive.iter().any(is)) && !set.negative.iter().any(is)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Http {
        geos: Vec<String>,
        variables: usize,
        notes: Vec<String>,
    }

    impl HttpLevel for Http {
        fn geo(&mut self, source: &str, entries: &[(String, bool)], default: bool) -> String {
            self.geos.push(format!("{source} {entries:?} {default}"));
            format!("$unit_geo_{}", self.geos.len())
        }
        fn variable(&mut self, what: &str) -> String {
            self.variables += 1;
            format!("$unit_{what}_{}", self.variables)
        }
        fn untranslated(&mut self, at: &str, _reason: &str) {
            self.notes.push(at.to_owned());
        }
    }

    fn read_match(json: &str) -> (Match, Http) {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut http = Http::default();
        let m = read(Some(At::root(&v)), &mut http).unwrap();
        (m, http)
    }

    #[test]
    fn conditions_become_if_tests() {
        let (m, http) = read_match(
            r#"{"method": ["GET", "head"], "headers": {"User-Agent": ["curl*", "~^Wget"]}, "arguments": {"mode": "~x"}}"#,
        );
        let met: Vec<_> = m.tests.iter().map(|t| t.when_met.as_str()).collect();
        assert_eq!(
            met,
            [
                // Unit upper-cases a method's patterns and compares with case.
                "$request_method ~ \"^(?:GET$|HEAD$)\"",
                // A header's wildcards compare without case, its regexes as written.
                "$http_user_agent ~ \"^(?=.)(?:(?i:curl.*)$|.*?(?:^Wget))\"",
                // A regex in `arguments`: the first occurrence, noted.
                "$arg_mode ~ \"^(?=.).*?(?:x)\""
            ]
        );
        assert_eq!(
            m.tests[0].when_failed,
            "$request_method !~ \"^(?:GET$|HEAD$)\""
        );
        assert_eq!(http.notes, ["arguments/mode"]);
    }

    #[test]
    fn arguments_query_and_cookies_are_read_from_the_whole_raw_string() {
        let (m, http) = read_match(
            r#"{"arguments": {"q": "a b"}, "query": "x=%7E", "cookies": {"sid": "A*"}}"#,
        );
        assert!(http.notes.is_empty());
        let met: Vec<_> = m.tests.iter().map(|t| t.when_met.as_str()).collect();
        assert_eq!(
            met,
            [
                // `q` there at least once, and no `q` whose decoded value is other than "a b".
                concat!(
                    "$args ~ \"^(?=(?:.*&)?(?:q|%71)(?:=|&|$))",
                    "(?!(?:.*&)?(?:q|%71)(?:=|(?=&|$))",
                    "(?!(?:(?:a|%61)(?:\\+|%20)(?:b|%62))(?=&|$)))\""
                ),
                "$args ~ \"^(?:(?:x|%78)(?:\\=|%3[Dd])(?:\\~|%7[Ee]))$\"",
                concat!(
                    "$http_cookie ~ \"^(?=(?:.*;)? *sid=)",
                    "(?!(?:.*;)? *sid=(?!(?:A[^;]*)(?<! ) *(?:;|$)))\""
                ),
            ]
        );
    }

    #[test]
    fn addresses_go_through_geo() {
        let (m, http) =
            read_match(r#"{"source": ["!192.168.1.1", "192.168.1.0/24", "10.0.0.1-10.0.0.9"]}"#);
        assert_eq!(m.tests[0].when_met, "$unit_geo_1 = 1");
        assert_eq!(
            http.geos,
            ["$remote_addr [(\"192.168.1.1\", false), (\"192.168.1.0/24\", true)] false"]
        );
        assert_eq!(http.notes, ["source/2"]);
    }

    #[test]
    fn any_address_is_geos_default_and_any_port_is_the_address() {
        let (m, http) =
            read_match(r#"{"source": ["!127.0.0.0/8", "*"], "destination": "10.0.0.2:*"}"#);
        assert_eq!(m.tests.len(), 2);
        assert_eq!(
            http.geos,
            [
                "$remote_addr [(\"127.0.0.0/8\", false)] true",
                "$server_addr [(\"10.0.0.2\", true)] false"
            ]
        );
        assert!(http.notes.is_empty());
    }

    #[test]
    fn host_and_scheme_are_kept_apart() {
        let (m, _) = read_match(r#"{"host": "*.example.com", "scheme": "https", "uri": "/a/*"}"#);
        assert!(m.tests.is_empty());
        assert!(scheme_admits(m.scheme.as_ref().unwrap(), "https"));
        assert!(!scheme_admits(m.scheme.as_ref().unwrap(), "http"));
        assert_eq!(pattern::set_regex(&m.uri).unwrap(), "^/a/");
    }

    #[test]
    fn an_array_of_objects_is_one_test_met_by_any_of_them() {
        let (m, http) =
            read_match(r#"{"cookies": [{"a": "1", "b": "2"}, {"c": "3"}], "method": "GET"}"#);
        assert!(http.notes.is_empty());
        assert_eq!(m.tests.len(), 2);
        let t = &m.tests[0];
        let cookie = |name: &str, value: &str| {
            format!(
                "if ($http_cookie !~ \"^(?=(?:.*;)? *{name}=)(?!(?:.*;)? *{name}=(?!(?:{value})(?<! ) *(?:;|$)))\") {{\n"
            )
        };
        assert_eq!(
            t.prelude.text,
            [
                "set $unit_any_1 \"\";\n".to_owned(),
                "set $unit_all_2 1;\n".to_owned(),
                cookie("a", "1"),
                "    set $unit_all_2 \"\";\n}\n".to_owned(),
                cookie("b", "2"),
                "    set $unit_all_2 \"\";\n}\n".to_owned(),
                "if ($unit_all_2) {\n    set $unit_any_1 1;\n}\n".to_owned(),
                "set $unit_all_2 1;\n".to_owned(),
                cookie("c", "3"),
                "    set $unit_all_2 \"\";\n}\n".to_owned(),
                "if ($unit_all_2) {\n    set $unit_any_1 1;\n}\n".to_owned(),
            ]
            .concat()
        );
        assert_eq!(
            (t.when_met.as_str(), t.when_failed.as_str()),
            ("$unit_any_1", "$unit_any_1 = \"\"")
        );
        // An object that admits every request makes the condition none at all.
        let (m, _) = read_match(r#"{"headers": [{"X-A": "1"}, {}]}"#);
        assert!(m.tests.is_empty());
    }
}
