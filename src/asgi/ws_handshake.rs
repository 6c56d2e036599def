//! What a request's `Upgrade` asks of an ASGI location: a WebSocket, a refusal of a broken
//! handshake (RFC 6455, section 4.2), or nothing (plain HTTP).

use super::scope::HttpScope;

/// The WebSocket version this server speaks, sent back when a client asks for another.
pub const WEBSOCKET_VERSION: &[u8] = b"13";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// No WebSocket upgrade asked for (or not one HTTP/1.1 can carry): an `http` scope.
    None,
    /// A valid opening handshake: a `websocket` scope.
    WebSocket,
    /// An upgrade to a WebSocket with a version other than 13 (or none): 426 Upgrade Required
    /// with `Sec-WebSocket-Version: 13`, so the client can retry with it.
    UnsupportedVersion,
    /// An upgrade to a WebSocket whose handshake is malformed: 400, for the reason given.
    Malformed(&'static str),
}

/// Sorts `scope`'s request. The app never sees a broken handshake: uvicorn, Hypercorn and
/// Granian refuse one the same way before the app runs.
pub fn handshake(scope: &HttpScope) -> Handshake {
    // An `Upgrade` not named in `Connection` is not an upgrade (RFC 9110, 7.8), and only an
    // HTTP/1.1 GET can open a WebSocket: anything else is plain HTTP, as before.
    if scope.method() != b"GET"
        || scope.http_version != "1.1"
        || !has_token(scope, b"upgrade", "websocket")
        || !has_token(scope, b"connection", "upgrade")
    {
        return Handshake::None;
    }
    // What follows the handshake on the connection is the client's frames: a body there would
    // be read as frames (uvicorn and Kestrel refuse one with a 400 too).
    if scope
        .headers()
        .any(|(n, v)| n == b"transfer-encoding" || n == b"content-length" && v.trim_ascii() != b"0")
    {
        return Handshake::Malformed("a body");
    }
    let versions = values(scope, b"sec-websocket-version");
    if versions.len() > 1 {
        return Handshake::Malformed("more than one Sec-WebSocket-Version header");
    }
    if versions.first().map(|v| v.trim_ascii()) != Some(WEBSOCKET_VERSION) {
        return Handshake::UnsupportedVersion;
    }
    match values(scope, b"sec-websocket-key").as_slice() {
        [] => Handshake::Malformed("no Sec-WebSocket-Key header"),
        [key] if is_nonce(key.trim_ascii()) => Handshake::WebSocket,
        [_] => Handshake::Malformed("a Sec-WebSocket-Key that is not 16 bytes in base64"),
        _ => Handshake::Malformed("more than one Sec-WebSocket-Key header"),
    }
}

fn values<'a>(scope: &'a HttpScope, name: &[u8]) -> Vec<&'a [u8]> {
    scope
        .headers()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect()
}

/// Run for every GET of an ASGI location: no allocation for the common request.
fn has_token(scope: &HttpScope, name: &[u8], token: &str) -> bool {
    scope.headers().any(|(n, v)| {
        n == name
            && v.split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `key` is 16 bytes in base64 (RFC 6455, 4.1: the client's random nonce): 22 base64
/// characters and `==`.
fn is_nonce(key: &[u8]) -> bool {
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(method: &str, version: &'static str, headers: &[(&str, &str)]) -> HttpScope {
        let mut b = HttpScope::builder();
        b.http_version(version)
            .set(super::super::scope::ScopeField::Method, method.as_bytes());
        for (n, v) in headers {
            b.header(n.as_bytes(), v.as_bytes());
        }
        b.build()
    }

    const UPGRADE: [(&str, &str); 2] = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
    const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    const V13: (&str, &str) = ("Sec-WebSocket-Version", "13");

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        UPGRADE.iter().chain(extra).copied().collect()
    }

    #[test]
    fn a_valid_handshake_is_a_websocket() {
        assert_eq!(
            handshake(&scope("GET", "1.1", &with(&[KEY, V13]))),
            Handshake::WebSocket
        );
        // Token lists and case, as browsers and proxies send them.
        let h = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            KEY,
            V13,
        ];
        assert_eq!(handshake(&scope("GET", "1.1", &h)), Handshake::WebSocket);
        let h = with(&[KEY, V13, ("Content-Length", "0")]);
        assert_eq!(handshake(&scope("GET", "1.1", &h)), Handshake::WebSocket);
    }

    #[test]
    fn what_is_not_an_upgrade_to_a_websocket_is_plain_http() {
        for (method, version, headers) in [
            ("GET", "1.1", vec![KEY, V13]),
            ("GET", "1.1", vec![("Upgrade", "websocket"), KEY, V13]),
            (
                "GET",
                "1.1",
                vec![("Upgrade", "h2c"), ("Connection", "Upgrade"), KEY, V13],
            ),
            ("POST", "1.1", with(&[KEY, V13])),
            ("GET", "1.0", with(&[KEY, V13])),
            ("GET", "2", with(&[KEY, V13])),
        ] {
            assert_eq!(
                handshake(&scope(method, version, &headers)),
                Handshake::None
            );
        }
    }

    #[test]
    fn another_version_or_none_is_426() {
        for v in [vec![KEY, ("Sec-WebSocket-Version", "8")], vec![KEY]] {
            assert_eq!(
                handshake(&scope("GET", "1.1", &with(&v))),
                Handshake::UnsupportedVersion
            );
        }
    }

    #[test]
    fn a_missing_bad_or_repeated_key_or_a_repeated_version_is_400() {
        for (headers, why) in [
            (vec![V13], "no Sec-WebSocket-Key"),
            (vec![V13, ("Sec-WebSocket-Key", "short")], "not 16 bytes"),
            (
                vec![V13, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=")],
                "not 16 bytes",
            ),
            (
                vec![V13, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub2!jZQ==")],
                "not 16 bytes",
            ),
            (vec![V13, KEY, KEY], "more than one Sec-WebSocket-Key"),
            (vec![V13, V13, KEY], "more than one Sec-WebSocket-Version"),
            (vec![V13, KEY, ("Content-Length", "5")], "a body"),
            (vec![V13, KEY, ("Transfer-Encoding", "chunked")], "a body"),
        ] {
            match handshake(&scope("GET", "1.1", &with(&headers))) {
                Handshake::Malformed(m) => assert!(m.contains(why), "{m} for {headers:?}"),
                other => panic!("{other:?} for {headers:?}"),
            }
        }
    }
}
