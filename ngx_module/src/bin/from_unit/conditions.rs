//! A route step's `match`: the URI becomes the location's regex (or, in a route's dispatch, a
//! test like the others); `host` and `scheme` choose the server blocks the step goes into; every
//! other condition becomes a test that nginx's `if` (or a `geo` variable for addresses)
//! evaluates.

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
            self.tests.extend(regex_test("$host", &set, true)?);
        }
        self.scheme_as_test(scheme_var)
    }

    /// `scheme` as a test of `var` (the scheme of a request, where no server block knows it).
    pub fn scheme_as_test(&mut self, var: &str) -> Read<()> {
        if let Some(set) = self.scheme.take() {
            self.tests.extend(regex_test(var, &set, false)?);
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
fn regex_test(var: &str, set: &PatternSet, caseless: bool) -> Read<Option<Test>> {
    let Some(re) = pattern::set_regex(set) else {
        return Ok(None);
    };
    Ok(Some(test_of(var, &re, caseless)?))
}

fn test_of(var: &str, re: &str, caseless: bool) -> Read<Test> {
    let re = quoted_regex(re)?;
    let star = if caseless { "*" } else { "" };
    Ok(Test {
        when_met: format!("{var} ~{star} {re}"),
        when_failed: format!("{var} !~{star} {re}"),
        ..Test::default()
    })
}

/// The URI's patterns as a test (where no location's regex can say them).
pub fn uri_test(set: &PatternSet) -> Read<Option<Test>> {
    regex_test("$uri", set, false)
}

/// A named argument's, cookie's or header's test. Unit's patterns never match a field the
/// request does not have, not even `*` or a negation; nginx's variable of a missing field is
/// empty, so an empty value counts as a missing one (where the patterns would admit it).
fn field_test(var: &str, set: &PatternSet, caseless: bool) -> Read<Test> {
    let re = match pattern::set_regex(set) {
        Some(re) if !pattern::admits_empty(set) => re,
        Some(re) => match re.strip_prefix('^') {
            Some(rest) => format!("^(?=.){rest}"),
            None => format!("^(?=.).*?(?:{re})"),
        },
        None => "^(?=.)".to_owned(),
    };
    test_of(var, &re, caseless)
}

/// nginx's variable of a request header (`X-Real-IP` is `$http_x_real_ip`).
fn header_var(name: &str) -> String {
    format!("$http_{}", name.to_ascii_lowercase().replace('-', "_"))
}

fn is_nginx_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `arguments`, `cookies`, `headers`: one object (every name must match) becomes one test per
/// name; an array of objects (one of them must match) one test whose prelude tries each object.
fn named_tests(
    at: &At<'_>,
    var: impl Fn(&str) -> String,
    decode: bool,
    caseless: bool,
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
            if !is_nginx_var_name(name) {
                http.untranslated(
                    patterns_at.path(),
                    "a name nginx has no variable for; the step is written without it",
                );
                continue;
            }
            let set = patterns(&patterns_at, decode)?;
            all.push(field_test(&var(name), &set, caseless)?);
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
    for (text, item) in at.strings()? {
        let (negated, body) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        if body == "*" || body == "*:*" {
            any_positive |= !negated;
            entries.push(("0.0.0.0/0".to_owned(), !negated));
            entries.push(("::/0".to_owned(), !negated));
            continue;
        }
        let plain = body
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '/'))
            && body.contains(['.', ':']);
        let with_port = body.starts_with('[') || (body.contains('.') && body.contains(':'));
        if !plain || with_port || body.contains('-') {
            http.untranslated(item.path(), "address ranges, ports and \"unix\" have no equivalent in nginx's geo module; the step is written without this pattern");
            continue;
        }
        any_positive |= !negated;
        entries.push((body.to_owned(), !negated));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let name = http.geo(var, &entries, !any_positive);
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
        match key {
            "uri" => m.uri = patterns(&value, true)?,
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
                let set = patterns(&value, false)?;
                m.tests.extend(regex_test("$request_method", &set, true)?);
            }
            "query" => {
                let set = patterns(&value, true)?;
                m.tests.extend(regex_test("$args", &set, false)?);
            }
            "arguments" => named_tests(
                &value,
                |n| format!("$arg_{n}"),
                true,
                false,
                &mut m.tests,
                http,
            )?,
            "cookies" => named_tests(
                &value,
                |n| format!("$cookie_{n}"),
                false,
                false,
                &mut m.tests,
                http,
            )?,
            "headers" => named_tests(&value, header_var, false, true, &mut m.tests, http)?,
            "source" => m.tests.extend(address_test(&value, "$remote_addr", http)?),
            "destination" => m.tests.extend(address_test(&value, "$server_addr", http)?),
            _ => http.untranslated(
                value.path(),
                "a condition unknown to this tool; the step is written without it",
            ),
        }
    }
    Ok(m)
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
        let (m, _) = read_match(
            r#"{"method": ["GET", "HEAD"], "headers": {"User-Agent": "curl*"}, "arguments": {"mode": "!strict"}}"#,
        );
        let met: Vec<_> = m.tests.iter().map(|t| t.when_met.as_str()).collect();
        assert_eq!(
            met,
            [
                "$request_method ~* \"^(?:GET$|HEAD$)\"",
                "$http_user_agent ~* \"^curl\"",
                // A missing (or empty) argument matches no pattern, a negation neither.
                "$arg_mode ~ \"^(?=.)(?!strict$)\""
            ]
        );
        assert_eq!(
            m.tests[0].when_failed,
            "$request_method !~* \"^(?:GET$|HEAD$)\""
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
        assert_eq!(
            t.prelude.text,
            concat!(
                "set $unit_any_1 \"\";\n",
                "set $unit_all_2 1;\n",
                "if ($cookie_a !~ \"^1$\") {\n",
                "    set $unit_all_2 \"\";\n",
                "}\n",
                "if ($cookie_b !~ \"^2$\") {\n",
                "    set $unit_all_2 \"\";\n",
                "}\n",
                "if ($unit_all_2) {\n",
                "    set $unit_any_1 1;\n",
                "}\n",
                "set $unit_all_2 1;\n",
                "if ($cookie_c !~ \"^3$\") {\n",
                "    set $unit_all_2 \"\";\n",
                "}\n",
                "if ($unit_all_2) {\n",
                "    set $unit_any_1 1;\n",
                "}\n",
            )
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
