//! `arguments`, `query` and `cookies` as regexes over the whole raw `$args` or `$http_cookie`.
//!
//! Unit splits the query at its raw `&` and `=`, decodes every `%XX` (and `+` as a space) in the
//! request's names and values, in the patterns and in the names a configuration gives (nowhere
//! in cookies), compares names case-sensitively, and wants every occurrence of a
//! repeated argument or cookie to match. nginx's `$arg_NAME` and `$cookie_NAME` are the
//! first occurrence, raw, found by a name of any case. A regex over the raw string says Unit's
//! test exactly: each byte a pattern asks for matches itself or any encoding of it, a `*` any
//! run of whole encoded characters, and lookaheads say "one occurrence at least, none failing".

use super::pattern::{decode_plus, Pattern, PatternSet};

/// The field a condition reads, which decides how its raw bytes encode the decoded ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An argument's name, between a raw `&` and its first raw `=`.
    ArgumentName,
    /// An argument's value, up to the next raw `&`.
    ArgumentValue,
    /// The whole query.
    Query,
    /// A cookie's value (Unit decodes nothing in cookies).
    Cookie,
}

const HEX: &str = "[0-9A-Fa-f]";

impl Field {
    /// One decoded byte of any value of this field: a whole `%XX`, or a `%` Unit keeps as it is
    /// (no two hex digits after it), or another byte; never half of an escape, so that a `*`
    /// before a literal cannot end inside one.
    fn any_char(self) -> String {
        match self {
            Field::ArgumentName | Field::ArgumentValue => {
                format!("(?:%{HEX}{{2}}|%(?!{HEX}{{2}})|[^&%])")
            }
            Field::Query => format!("(?:%{HEX}{{2}}|%(?!{HEX}{{2}})|[^%])"),
            Field::Cookie => "[^;]".to_owned(),
        }
    }

    /// Every raw form of the decoded byte `b`.
    fn byte(self, b: u8) -> String {
        let literal = escape(b);
        if self == Field::Cookie {
            return literal;
        }
        let hex = |d: u8| {
            let c = char::from_digit(u32::from(d), 16).unwrap();
            if c.is_ascii_digit() {
                c.to_string()
            } else {
                format!("[{}{}]", c.to_ascii_uppercase(), c)
            }
        };
        let encoded = format!("%{}{}", hex(b >> 4), hex(b & 15));
        match b {
            b' ' => format!("(?:\\+|{encoded})"),
            // Raw, these split or decode: only their encoding stands for them.
            b'+' => encoded,
            b'&' if self != Field::Query => encoded,
            b'=' if self == Field::ArgumentName => encoded,
            b'%' => format!("(?:{encoded}|%(?!{HEX}{{2}}))"),
            _ => format!("(?:{literal}|{encoded})"),
        }
    }

    /// A wildcard pattern as written in Unit's configuration as a regex over raw text.
    fn wildcard(self, text: &str) -> String {
        let any = format!("{}*", self.any_char());
        let mut out = String::new();
        for (i, slice) in text.split('*').enumerate() {
            if i > 0 {
                out.push_str(&any);
            }
            for b in self.decode(slice) {
                out.push_str(&self.byte(b));
            }
        }
        out
    }

    /// The bytes a piece of a pattern or a name stands for: Unit decodes `%XX` and `+` in
    /// everything of the query, the names a configuration gives included, and nothing in
    /// cookies. Its validator refuses a malformed escape, and so did `conditions` and
    /// `pattern::parse` before this runs.
    fn decode(self, text: &str) -> Vec<u8> {
        if self == Field::Cookie {
            return text.as_bytes().to_vec();
        }
        decode_plus(text).unwrap_or_else(|| text.as_bytes().to_vec())
    }

    /// A value that meets `set`, from its first raw byte to `end` (a lookahead at its end).
    fn value(self, set: &PatternSet, end: &str) -> Option<String> {
        let mut re = String::new();
        for p in &set.negative {
            re.push_str(&format!("(?!{}{end})", self.text_of(p)?));
        }
        let positive: Vec<String> = set
            .positive
            .iter()
            .map(|p| self.text_of(p))
            .collect::<Option<_>>()?;
        if positive.is_empty() {
            re.push_str(&format!("{}*", self.any_char()));
        } else {
            re.push_str(&format!("(?:{})", positive.join("|")));
        }
        re.push_str(end);
        Some(re)
    }

    /// A name: every byte it decodes to as itself, `*` included.
    fn wildcard_free(self, name: &str) -> String {
        self.decode(name)
            .into_iter()
            .map(|b| self.byte(b))
            .collect()
    }

    fn text_of(self, p: &Pattern) -> Option<String> {
        match p {
            Pattern::Wildcard { text, .. } => Some(self.wildcard(text)),
            Pattern::Regex(_) => None,
        }
    }
}

fn escape(b: u8) -> String {
    if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'/' || b == b',' {
        (b as char).to_string()
    } else if b.is_ascii_graphic() || b == b' ' {
        format!("\\{}", b as char)
    } else {
        format!("\\x{b:02x}")
    }
}

/// The regex over `$args` an `arguments` member `name` with patterns `set` is; `None` when a
/// pattern is a `~` regex, which Unit runs on the decoded value and no regex over the raw
/// query can.
pub fn argument(name: &str, set: &PatternSet) -> Option<String> {
    let name = Field::ArgumentName.wildcard_free(name);
    // An argument without `=` has an empty value.
    let value = Field::ArgumentValue.value(set, "(?=&|$)")?;
    Some(format!(
        "^(?=(?:.*&)?{name}(?:=|&|$))(?!(?:.*&)?{name}(?:=|(?=&|$))(?!{value}))"
    ))
}

/// The regex over `$args` a `query` condition is (`None` as for [`argument`]).
pub fn query(set: &PatternSet) -> Option<String> {
    Some(format!("^{}", Field::Query.value(set, "$")?))
}

/// A regex no string matches.
pub const NEVER: &str = "(?!)";

/// The regex over `$http_cookie` a `cookies` member is: Unit splits it at `;`, skips the spaces
/// before a name and drops those after a value, and ignores a cookie without `=`.
pub fn cookie(name: &str, set: &PatternSet) -> Option<String> {
    // Unit's cookie names end at the first `=` and start after the spaces, and no name or
    // value holds a `;`: a member so named is never there, and such a pattern never matches
    // (a negated one never excludes). A regex over the raw header would find them all the same.
    if name.starts_with(' ') || name.contains(['=', ';']) {
        return Some(NEVER.to_owned());
    }
    let possible = |p: &Pattern| !matches!(p, Pattern::Wildcard { text, .. } if text.contains(';'));
    let kept = PatternSet {
        positive: set
            .positive
            .iter()
            .filter(|p| possible(p))
            .cloned()
            .collect(),
        negative: set
            .negative
            .iter()
            .filter(|p| possible(p))
            .cloned()
            .collect(),
    };
    if kept.positive.is_empty() && !set.positive.is_empty() {
        return Some(NEVER.to_owned());
    }
    let set = &kept;
    let name = Field::Cookie.wildcard_free(name);
    let value = Field::Cookie.value(set, "(?<! ) *(?:;|$)")?;
    Some(format!(
        "^(?=(?:.*;)? *{name}=)(?!(?:.*;)? *{name}=(?!{value}))"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::pattern::parse;
    use super::*;

    fn set(patterns: &[&str]) -> PatternSet {
        let mut s = PatternSet::default();
        for p in patterns {
            let (neg, pat) = parse(p, true).unwrap();
            if neg {
                s.negative.push(pat);
            } else {
                s.positive.push(pat);
            }
        }
        s
    }

    #[test]
    fn bytes_match_any_of_their_encodings() {
        let f = Field::ArgumentValue;
        assert_eq!(f.byte(b'a'), "(?:a|%61)");
        assert_eq!(f.byte(b'~'), "(?:\\~|%7[Ee])");
        assert_eq!(f.byte(b' '), "(?:\\+|%20)");
        assert_eq!(f.byte(b'+'), "%2[Bb]");
        assert_eq!(f.byte(b'&'), "%26");
        assert_eq!(Field::Query.byte(b'&'), "(?:\\&|%26)");
        assert_eq!(Field::ArgumentName.byte(b'='), "%3[Dd]");
        assert_eq!(Field::Cookie.byte(b'a'), "a");
        // `%2A` in a pattern is a literal `*`, `+` a space.
        assert_eq!(f.wildcard("a%2A+"), "(?:a|%61)(?:\\*|%2[Aa])(?:\\+|%20)");
    }

    #[test]
    fn argument_names_are_decoded_as_unit_decodes_them() {
        let re = argument("a+b", &set(&["1"])).unwrap();
        // A space, raw as `+` or `%20`; a `%2B` is a plus, another name.
        assert!(re.starts_with("^(?=(?:.*&)?(?:a|%61)(?:\\+|%20)(?:b|%62)(?:=|&|$))"));
        let re = argument("a%3Db", &set(&["1"])).unwrap();
        // A decoded `=` is only ever its escape in a raw name.
        assert!(re.starts_with("^(?=(?:.*&)?(?:a|%61)%3[Dd](?:b|%62)(?:=|&|$))"));
    }

    #[test]
    fn cookies_unit_never_parses_never_match() {
        for name in ["a=b", "a;b", " a"] {
            assert_eq!(cookie(name, &set(&["1"])).unwrap(), NEVER);
        }
        assert_eq!(cookie("a", &set(&["x;y"])).unwrap(), NEVER);
        assert_eq!(cookie("a", &set(&["x;y", "z"])), cookie("a", &set(&["z"])));
        // A negation that can never match excludes nothing.
        assert_eq!(cookie("a", &set(&["!x;y"])), cookie("a", &set(&[])));
    }

    #[test]
    fn regexes_in_arguments_and_cookies_are_left_to_the_caller() {
        assert_eq!(argument("a", &set(&["~x"])), None);
        assert_eq!(cookie("a", &set(&["!~x"])), None);
        assert_eq!(query(&set(&["~x"])), None);
    }
}
