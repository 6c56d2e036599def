//! `X-Accel-Redirect` values: everything nginx's upstream modules refuse is refused; an accepted
//! target never has a `..` segment or a control character, before or after decoding, and splits
//! back into exactly the value it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ngx_wsgi::accel::{check_redirect, RedirectTarget, Refusal};
use ngx_wsgi_fuzz::{has_dot_dot_segment, percent_decoded};

fn is_control(c: &u8) -> bool {
    *c < 0x20 || *c == 0x7f
}

/// The path part of a value: up to its first `?`.
fn path_of(value: &[u8]) -> &[u8] {
    value.split(|&c| c == b'?').next().unwrap_or_default()
}

/// What nginx's upstream modules refuse for this header (as read in nginx 1.28's
/// `ngx_http_parse_unsafe_uri` and its caller): nothing for a named location; otherwise an empty
/// value or one starting with `?`, and a path (before the first `?`) with a `..` segment or a
/// NUL, as written or, when it has escapes, after decoding.
fn nginx_refuses(value: &[u8]) -> bool {
    match value.first() {
        Some(b'@') => return false,
        None | Some(b'?') => return true,
        _ => {}
    }
    let path = path_of(value);
    if path.contains(&0) || has_dot_dot_segment(path) {
        return true;
    }
    // A malformed escape is decoded leniently by nginx; a refusal here is checked separately.
    match percent_decoded(path) {
        Some(decoded) => decoded.contains(&0) || has_dot_dot_segment(&decoded),
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let result = check_redirect(data);
    if nginx_refuses(data) {
        assert!(
            result.is_err(),
            "nginx refuses {:?}",
            String::from_utf8_lossy(data)
        );
    }
    match result {
        Ok(RedirectTarget::Named(name)) => {
            assert_eq!(name, data);
            assert_eq!(data[0], b'@');
            assert!(!data.iter().any(is_control));
        }
        Ok(RedirectTarget::Uri {
            path,
            raw_path,
            args,
        }) => {
            assert_eq!(raw_path, path_of(data));
            let mut rebuilt = raw_path.to_vec();
            if data.len() > raw_path.len() {
                rebuilt.push(b'?');
                rebuilt.extend_from_slice(args);
            }
            assert_eq!(rebuilt, data);
            assert_eq!(Some(path.to_vec()), percent_decoded(raw_path));
            assert!(path.starts_with(b"/"));
            assert!(!has_dot_dot_segment(&path) && !has_dot_dot_segment(raw_path));
            assert!(!path.iter().any(is_control) && !data.iter().any(is_control));
        }
        Err(Refusal::Empty) => assert!(data.is_empty()),
        Err(Refusal::NotAbsolute) => assert!(!matches!(data.first(), None | Some(b'/' | b'@'))),
        Err(Refusal::BadEscape) => assert_eq!(percent_decoded(path_of(data)), None),
        Err(Refusal::DotDot) => {
            assert!(has_dot_dot_segment(
                &percent_decoded(path_of(data)).unwrap()
            ))
        }
        Err(Refusal::ControlCharacter) => assert!(
            data.iter().any(is_control)
                || percent_decoded(path_of(data)).is_some_and(|p| p.iter().any(is_control))
        ),
    }
});
