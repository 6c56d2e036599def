//! Unit's match patterns (`*` wildcards, `~` regexes, `!` negations, percent-encoded
//! characters) as the PCRE regexes nginx matches with, and nginx configuration tokens.

/// One pattern of a match condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    /// A literal or wildcard pattern: `text` as written (less its `!`), `regex` what it matches
    /// as an unanchored regex (`*` is any run of characters; `%XX` decoded where Unit decodes).
    Wildcard { text: String, regex: String },
    /// A `~` pattern: a PCRE regex that may match anywhere in the value.
    Regex(String),
}

/// A condition's patterns: the value must match one of `positive` (when there are any) and none
/// of `negative`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatternSet {
    pub positive: Vec<Pattern>,
    pub negative: Vec<Pattern>,
}

/// Parses one pattern; `decode` for the properties whose patterns Unit percent-decodes (`uri`,
/// `query`, `arguments`), where `%2A` is a literal `*` and not a wildcard.
pub fn parse(text: &str, decode: bool) -> Result<(bool, Pattern), String> {
    let (negated, body) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(re) = body.strip_prefix('~') {
        unbalanced(re).map_or(Ok(()), |what| {
            Err(format!("{text:?}: a regex with {what}, which Unit refuses"))
        })?;
        return Ok((negated, Pattern::Regex(re.to_owned())));
    }
    let bytes = body.as_bytes();
    let mut regex = String::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if decode => {
                let byte = percent_byte(bytes, i)
                    .ok_or_else(|| format!("{text:?}: a malformed %-escape, which Unit refuses"))?;
                literal.push(byte);
                i += 3;
            }
            b'*' => {
                regex.push_str(&escape_bytes(&std::mem::take(&mut literal)));
                regex.push_str(".*");
                i += 1;
            }
            b => {
                literal.push(b);
                i += 1;
            }
        }
    }
    regex.push_str(&escape_bytes(&literal));
    Ok((
        negated,
        Pattern::Wildcard {
            text: body.to_owned(),
            regex,
        },
    ))
}

/// The byte a `%XX` at `bytes[i]` stands for: two hex digits, as Unit's decoder wants (a sign
/// such as `%+1`, which Rust's radix parser would take, is not one).
pub fn percent_byte(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |j: usize| {
        bytes
            .get(j)
            .and_then(|&c| char::from(c).to_digit(16))
            .map(|d| d as u8)
    };
    Some(hex(i + 1)? << 4 | hex(i + 2)?)
}

/// Unit's decoding of the query's text (argument names and values, the whole query, and their
/// patterns): `%XX`, and `+` as a space; `None` where Unit's decoder refuses it.
pub fn decode_plus(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(percent_byte(bytes, i)?);
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// The commonest broken regex, caught here with its JSON path rather than by `nginx -t` with a
/// line of the output: an unclosed group or class, or a stray `)`.
fn unbalanced(re: &str) -> Option<&'static str> {
    let mut depth = 0usize;
    let mut chars = re.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                // A `]` first in a class is a literal one.
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                }
                loop {
                    match chars.next() {
                        None => return Some("an unclosed ["),
                        Some('\\') => {
                            chars.next();
                        }
                        Some(']') => break,
                        Some(_) => {}
                    }
                }
            }
            '(' => depth += 1,
            ')' if depth == 0 => return Some("a ) that closes nothing"),
            ')' => depth -= 1,
            _ => {}
        }
    }
    (depth > 0).then_some("an unclosed (")
}

fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b'/' || b == b'_' || b == b'-' || b == b',' {
            out.push(b as char);
        } else if b.is_ascii_graphic() || b == b' ' {
            out.push('\\');
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A set's patterns as one regex over the whole value, in the form nginx's `location ~` and
/// `if (... ~ ...)` take; `None` when it matches every value.
pub fn set_regex(set: &PatternSet) -> Option<String> {
    if set.positive.is_empty() && set.negative.is_empty() {
        return None;
    }
    let mut re = String::from("^");
    for neg in &set.negative {
        match neg {
            Pattern::Wildcard { regex, .. } => re.push_str(&format!("(?!{regex}$)")),
            Pattern::Regex(r) => re.push_str(&format!("(?!.*?(?:{r}))")),
        }
    }
    let alternatives: Vec<String> = set
        .positive
        .iter()
        .map(|p| match p {
            // `/static/*` needs no `.*$`: a prefix is enough.
            Pattern::Wildcard { regex, .. } => match regex.strip_suffix(".*") {
                Some(prefix) => prefix.to_owned(),
                None => format!("{regex}$"),
            },
            Pattern::Regex(r) => format!(".*?(?:{r})"),
        })
        .collect();
    match alternatives.as_slice() {
        [] => {}
        [one] if set.negative.is_empty() && !one.contains('|') => re.push_str(one),
        many => re.push_str(&format!("(?:{})", many.join("|"))),
    }
    // `^.*?(?:x)` is `x` anywhere: say it the short way.
    if let Some(rest) = re.strip_prefix("^.*?(?:") {
        if set.negative.is_empty() && set.positive.len() == 1 {
            return Some(rest.strip_suffix(')').unwrap_or(rest).to_owned());
        }
    }
    Some(re)
}

/// Whether the set may match an empty value (a `~` regex is taken to).
pub fn admits_empty(set: &PatternSet) -> bool {
    let empty = |p: &Pattern| match p {
        Pattern::Wildcard { text, .. } => text.chars().all(|c| c == '*'),
        Pattern::Regex(_) => true,
    };
    (set.positive.is_empty() || set.positive.iter().any(empty))
        && !set
            .negative
            .iter()
            .any(|p| matches!(p, Pattern::Wildcard { text, .. } if text.is_empty()))
}

/// Whether a wildcard pattern (not a regex) matches `value` exactly; host names compare without
/// case.
pub fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let v: Vec<char> = value.to_ascii_lowercase().chars().collect();
    // Classic two-pointer glob match with backtracking to the last `*`.
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A host wildcard (lowercased) as a `server_name`: nginx's own wildcards have one `*`, first
/// before a dot or last after one; any other form is a regex over the name (which nginx
/// lowercases, as Unit compares it).
pub fn server_name(host: &str) -> String {
    let stars = host.matches('*').count();
    if stars == 0 || (stars == 1 && (host.starts_with("*.") || host.ends_with(".*"))) {
        return host.to_owned();
    }
    let parts: Vec<String> = host
        .split('*')
        .map(|p| escape_bytes(p.as_bytes()))
        .collect();
    format!("~^{}$", parts.join(".*"))
}

/// A value as one nginx configuration token: bare when nginx reads it back unchanged, else
/// double-quoted. nginx turns `\"`, `\'`, `\\`, `\t`, `\r` and `\n` into one character in any
/// token, so those backslashes are doubled; other ones (`\.`, `\d`) stay as written.
pub fn token(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?}: control characters cannot be written"));
    }
    let mut body = String::with_capacity(value.len() + 2);
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(
                chars.peek(),
                Some('"' | '\'' | '\\' | 't' | 'r' | 'n') | None
            ) =>
            {
                body.push_str("\\\\")
            }
            '"' => body.push_str("\\\""),
            _ => body.push(c),
        }
    }
    let bare = !value.is_empty()
        && !value.starts_with('\'')
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '#'));
    Ok(if bare { body } else { format!("\"{body}\"") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str], decode: bool) -> PatternSet {
        let mut s = PatternSet::default();
        for p in patterns {
            let (neg, pat) = parse(p, decode).unwrap();
            if neg {
                s.negative.push(pat);
            } else {
                s.positive.push(pat);
            }
        }
        s
    }

    fn re(patterns: &[&str]) -> String {
        set_regex(&set(patterns, true)).unwrap()
    }

    #[test]
    fn uri_patterns_become_anchored_regexes() {
        assert_eq!(re(&["/static/*"]), "^/static/");
        assert_eq!(re(&["/back"]), "^/back$");
        assert_eq!(re(&["*.css"]), "^.*\\.css$");
        assert_eq!(re(&["/admin/*/*.php"]), "^/admin/.*/.*\\.php$");
        assert_eq!(re(&["/v1/*", "/v2/*"]), "^(?:/v1/|/v2/)");
        assert_eq!(re(&["~\\.jpe?g$"]), "\\.jpe?g$");
        assert_eq!(re(&["~^/api/v\\d+/"]), "^/api/v\\d+/");
        assert_eq!(re(&["!*/api/*"]), "^(?!.*/api/.*$)");
        assert_eq!(
            re(&["/articles/*", "!~/articles/\\d{4}"]),
            "^(?!.*?(?:/articles/\\d{4}))(?:/articles/)"
        );
    }

    #[test]
    fn percent_escapes_are_decoded_and_stay_literal() {
        assert_eq!(re(&["/a%2Ab"]), "^/a\\*b$");
        assert_eq!(re(&["/caf%C3%A9"]), "^/caf\\xc3\\xa9$");
        assert!(parse("/a%zz", true).is_err());
        // A sign is no hex digit, whatever Rust's radix parser says.
        assert!(parse("/a%+1", true).is_err());
        assert!(parse("/a%-1b", true).is_err());
        assert!(parse("/a%1", true).is_err());
        assert_eq!(re(&["/%7e%7E"]), "^/\\~\\~$");
        // Hosts and headers are not decoded.
        assert_eq!(set_regex(&set(&["a%2A"], false)).unwrap(), "^a\\%2A$");
    }

    #[test]
    fn broken_regexes_are_refused() {
        assert!(parse("~(unclosed", false)
            .unwrap_err()
            .contains("an unclosed ("));
        assert!(parse("~a)", false).unwrap_err().contains("closes nothing"));
        assert!(parse("~[a-z", false).unwrap_err().contains("an unclosed ["));
        assert!(parse("~[]()]\\(x", false).is_ok());
        assert!(parse("~(?<n>a)\\k<n>", false).is_ok());
    }

    #[test]
    fn names_decode_plus_and_escapes_or_are_refused() {
        assert_eq!(decode_plus("a+b%3D%3d").unwrap(), b"a b==");
        assert_eq!(decode_plus("").unwrap(), b"");
        assert_eq!(decode_plus("a%"), None);
        assert_eq!(decode_plus("a%4"), None);
        assert_eq!(decode_plus("a%+1"), None);
        assert_eq!(decode_plus("a%g0"), None);
    }

    #[test]
    fn no_patterns_match_everything() {
        assert_eq!(set_regex(&PatternSet::default()), None);
    }

    #[test]
    fn wildcards_match_hosts_without_case() {
        assert!(wildcard_matches("*.example.com", "www.Example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(wildcard_matches("eu-*.example.com", "eu-5.example.com"));
        assert!(wildcard_matches("a*b*c", "aXXbYYc"));
        assert!(!wildcard_matches("a*b*c", "aXXbYY"));
        assert!(wildcard_matches("*", ""));
    }

    #[test]
    fn host_wildcards_nginx_lacks_are_regexes() {
        assert_eq!(server_name("*.example.com"), "*.example.com");
        assert_eq!(server_name("www.example.*"), "www.example.*");
        assert_eq!(server_name("example.com"), "example.com");
        assert_eq!(server_name("*"), "~^.*$");
        assert_eq!(server_name("www.*.com"), "~^www\\..*\\.com$");
        assert_eq!(server_name("*example.com"), "~^.*example\\.com$");
        assert_eq!(server_name("*.example.*"), "~^.*\\.example\\..*$");
        assert_eq!(
            server_name("*-staging.example.com"),
            "~^.*-staging\\.example\\.com$"
        );
        assert_eq!(server_name("a*"), "~^a.*$");
    }

    #[test]
    fn tokens_read_back_as_written() {
        assert_eq!(token("/srv/app").unwrap(), "/srv/app");
        assert_eq!(token("^/static/").unwrap(), "^/static/");
        assert_eq!(token("\\.css$").unwrap(), "\\.css$");
        assert_eq!(token("\\d{4}").unwrap(), "\"\\d{4}\"");
        // nginx reads `\\` as one backslash and keeps `\b`: three come back as two.
        assert_eq!(token("a\\\\b").unwrap(), "a\\\\\\b");
        assert_eq!(token("\\t").unwrap(), "\\\\t");
        assert_eq!(
            token("max-age=60, s-maxage=120").unwrap(),
            "\"max-age=60, s-maxage=120\""
        );
        assert_eq!(token("x\";daemon on;").unwrap(), "\"x\\\";daemon on;\"");
        assert_eq!(token("").unwrap(), "\"\"");
        assert!(token("a\nb").is_err());
    }
}
