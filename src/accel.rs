//! The `X-Accel-*` response headers an app gives its server: answer from another location
//! (`X-Accel-Redirect`), pace the response (`X-Accel-Limit-Rate`), declare its charset
//! (`X-Accel-Charset`).
//!
//! The app is trusted, but a redirect target is often built from client input (`/protected/` +
//! a file name the client chose), so a target that could climb out of the location it names is
//! refused, as nginx's upstream modules refuse it for a proxied app. The rules here are at least
//! as strict as nginx's: a `..` segment before or after percent-decoding, a NUL (or any control
//! character) after decoding, an empty value and one that does not start with `/` or `@` are
//! refused, and so is a malformed `%` escape (nginx copies it through; no real path has one).

use std::borrow::Cow;
use std::fmt;

/// A set of `X-Accel-*` headers, as an ignore directive lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccelHeaders(u8);

impl AccelHeaders {
    pub const NONE: AccelHeaders = AccelHeaders(0);
    pub const REDIRECT: AccelHeaders = AccelHeaders(1);
    pub const LIMIT_RATE: AccelHeaders = AccelHeaders(2);
    pub const CHARSET: AccelHeaders = AccelHeaders(4);

    /// The header a directive argument names (case-insensitive), among those a server honours.
    pub fn named(name: &[u8], honoured: AccelHeaders) -> Option<AccelHeaders> {
        NAMES
            .iter()
            .find(|(n, h)| honoured.contains(*h) && name.eq_ignore_ascii_case(n.as_bytes()))
            .map(|&(_, h)| h)
    }

    /// The names of the headers in this set, for messages.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .filter(|(_, h)| self.contains(*h))
            .map(|&(n, _)| n)
            .collect()
    }

    /// The set as bits, for a server's configuration record (see `from_bits`).
    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn from_bits(bits: u8) -> AccelHeaders {
        AccelHeaders(bits & 7)
    }

    pub const fn contains(self, other: AccelHeaders) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub const fn with(self, other: AccelHeaders) -> AccelHeaders {
        AccelHeaders(self.0 | other.0)
    }

    /// Whether header `name` is one of this set.
    pub fn covers(self, name: &[u8]) -> bool {
        self.0 != 0
            && NAMES
                .iter()
                .any(|(n, h)| self.contains(*h) && name.eq_ignore_ascii_case(n.as_bytes()))
    }
}

const NAMES: [(&str, AccelHeaders); 3] = [
    ("X-Accel-Redirect", AccelHeaders::REDIRECT),
    ("X-Accel-Limit-Rate", AccelHeaders::LIMIT_RATE),
    ("X-Accel-Charset", AccelHeaders::CHARSET),
];

/// Whether a response header is addressed to the server, never to the client: the `X-Accel-*`
/// headers nginx's upstream modules hide from the client, whether or not they act on them.
pub fn is_for_server(name: &[u8]) -> bool {
    const HIDDEN: [&[u8]; 5] = [
        b"x-accel-redirect",
        b"x-accel-limit-rate",
        b"x-accel-charset",
        b"x-accel-buffering",
        b"x-accel-expires",
    ];
    name.len() > 8 && HIDDEN.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Where an accepted `X-Accel-Redirect` sends the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectTarget<'a> {
    /// `@name`: an nginx named location (the whole value, `@` included).
    Named(&'a [u8]),
    /// A local URI: its percent-decoded path, and its arguments (after the first `?`) as sent.
    /// `raw_path` is the path as the app wrote it, for a server that decodes it itself.
    Uri {
        path: Cow<'a, [u8]>,
        raw_path: &'a [u8],
        args: &'a [u8],
    },
}

/// Why an `X-Accel-Redirect` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    NotAbsolute,
    BadEscape,
    DotDot,
    ControlCharacter,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Empty => "it is empty",
            Refusal::NotAbsolute => "it is neither a local path (/...) nor a named location (@...)",
            Refusal::BadEscape => "it has a malformed %-escape",
            Refusal::DotDot => "it has a \"..\" path segment",
            Refusal::ControlCharacter => "it has a NUL or another control character",
        })
    }
}

/// Checks an `X-Accel-Redirect` value and splits it into what the server redirects to.
pub fn check_redirect(value: &[u8]) -> Result<RedirectTarget<'_>, Refusal> {
    if value.iter().any(|&c| is_control(c)) {
        return Err(Refusal::ControlCharacter);
    }
    match value.first() {
        None => Err(Refusal::Empty),
        // Named locations are looked up by name, never mapped to files.
        Some(b'@') => Ok(RedirectTarget::Named(value)),
        Some(b'/') => {
            let (raw_path, args) = match value.iter().position(|&c| c == b'?') {
                Some(q) => (&value[..q], &value[q + 1..]),
                None => (value, &b""[..]),
            };
            let path = percent_decode(raw_path)?;
            if path.iter().any(|&c| is_control(c)) {
                return Err(Refusal::ControlCharacter);
            }
            if path.split(|&c| c == b'/').any(|segment| segment == b"..") {
                return Err(Refusal::DotDot);
            }
            Ok(RedirectTarget::Uri {
                path,
                raw_path,
                args,
            })
        }
        Some(_) => Err(Refusal::NotAbsolute),
    }
}

fn is_control(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

/// Decodes every `%XX`; a `%` without two hex digits after it is refused.
fn percent_decode(raw: &[u8]) -> Result<Cow<'_, [u8]>, Refusal> {
    if !raw.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'%' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let hex = |at: usize| raw.get(at).and_then(|&c| (c as char).to_digit(16));
        match (hex(i + 1), hex(i + 2)) {
            (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
            _ => return Err(Refusal::BadEscape),
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

/// `X-Accel-Limit-Rate`: bytes per second, a plain decimal number (nginx ignores anything else,
/// and so does the caller).
pub fn limit_rate(value: &[u8]) -> Option<u64> {
    crate::content_length::parse_decimal(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match check_redirect(value) {
            Ok(RedirectTarget::Uri { path, args, .. }) => (path.into_owned(), args.to_vec()),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(value)),
        }
    }

    #[test]
    fn plain_targets_are_split_and_decoded() {
        assert_eq!(
            uri(b"/protected/a.txt"),
            (b"/protected/a.txt".to_vec(), vec![])
        );
        assert_eq!(
            uri(b"/protected/a%20b.txt?x=1&y=%2e%2e"),
            (b"/protected/a b.txt".to_vec(), b"x=1&y=%2e%2e".to_vec())
        );
        // A decoded `?` is part of the path, not the start of the arguments.
        assert_eq!(uri(b"/p/a%3Fb?c"), (b"/p/a?b".to_vec(), b"c".to_vec()));
        // Dots that are not a whole segment name files, not parents.
        assert_eq!(
            uri(b"/p/..a/b../.../."),
            (b"/p/..a/b../.../.".to_vec(), vec![])
        );
        assert_eq!(uri(b"/p/?../.."), (b"/p/".to_vec(), b"../..".to_vec()));
        assert_eq!(
            check_redirect(b"@named?x"),
            Ok(RedirectTarget::Named(b"@named?x"))
        );
    }

    #[test]
    fn escapes_are_refused() {
        for (value, why) in [
            (&b""[..], Refusal::Empty),
            (b"?/protected/x", Refusal::NotAbsolute),
            (b"protected/x", Refusal::NotAbsolute),
            (b"../etc/passwd", Refusal::NotAbsolute),
            (b"http://example.org/", Refusal::NotAbsolute),
            (b"/protected/../secret", Refusal::DotDot),
            (b"/protected/..", Refusal::DotDot),
            (b"/protected/..?x", Refusal::DotDot),
            (b"/..", Refusal::DotDot),
            (b"/protected/%2e%2e/secret", Refusal::DotDot),
            (b"/protected/%2E./secret", Refusal::DotDot),
            (b"/protected/..%2fsecret", Refusal::DotDot),
            (b"/protected/x%00.txt", Refusal::ControlCharacter),
            (
                b"/protected/x%0d%0aSet-Cookie:%20a",
                Refusal::ControlCharacter,
            ),
            (b"/protected/x\0", Refusal::ControlCharacter),
            (b"@named\0", Refusal::ControlCharacter),
            (b"/protected/100%.txt", Refusal::BadEscape),
            (b"/protected/%zz", Refusal::BadEscape),
            (b"/protected/%4", Refusal::BadEscape),
        ] {
            assert_eq!(
                check_redirect(value),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn header_sets() {
        let honoured = AccelHeaders::REDIRECT.with(AccelHeaders::CHARSET);
        assert_eq!(
            AccelHeaders::named(b"x-accel-REDIRECT", honoured),
            Some(AccelHeaders::REDIRECT)
        );
        assert_eq!(AccelHeaders::named(b"X-Accel-Limit-Rate", honoured), None);
        assert!(honoured.covers(b"X-ACCEL-CHARSET"));
        assert!(!honoured.covers(b"X-Accel-Limit-Rate"));
        assert!(!AccelHeaders::NONE.covers(b"X-Accel-Redirect"));
        assert_eq!(honoured.names(), ["X-Accel-Redirect", "X-Accel-Charset"]);
        assert!(is_for_server(b"X-Accel-Buffering") && !is_for_server(b"X-Accel-Other"));
    }
}
