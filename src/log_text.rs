//! Shaping log text: Python text as the log takes it, and entries split for servers whose log
//! entries have a size limit.

/// Splits `msg` into pieces of at most `max` bytes, at line ends where possible, so that a long
/// traceback becomes several whole-line entries instead of one truncated entry.
pub fn split_entries(msg: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = msg.trim_end();
    while rest.len() > max {
        let mut limit = max;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        let cut = match rest[..limit].rfind('\n') {
            Some(i) if i > 0 => i,
            _ => limit,
        };
        out.push(&rest[..cut]);
        rest = rest[cut..].trim_start_matches('\n');
    }
    out.push(rest);
    out
}

/// Writes all of `bytes` to `fd`, giving up at the first error (a log or a report pipe has no
/// better fallback).
pub fn write_all(fd: std::os::fd::RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice of `bytes.len()` bytes to a descriptor the caller owns.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            break;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Python text as the log takes it: a lone surrogate (a file name that is not UTF-8, which
/// `os.listdir` and `os.fsdecode` give as one) escaped as CPython's own `sys.stderr` writes it
/// (`\udce9`), where a strict conversion would raise in the app's `print()` or lose its log
/// record.
pub fn python_text<'a>(
    text: &'a pyo3::Bound<'_, pyo3::types::PyString>,
) -> std::borrow::Cow<'a, str> {
    use pyo3::prelude::*;
    if let Ok(s) = text.to_cow() {
        return s;
    }
    let escaped = text
        .call_method1(
            pyo3::intern!(text.py(), "encode"),
            ("utf-8", "backslashreplace"),
        )
        .ok()
        .and_then(|b| b.extract::<Vec<u8>>().ok())
        .unwrap_or_default();
    std::borrow::Cow::Owned(String::from_utf8_lossy(&escaped).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_split_at_line_ends() {
        let line = "x".repeat(100);
        let text = vec![line.as_str(); 40].join("\n");
        let parts = split_entries(&text, 1000);
        assert_eq!(parts.len(), 5);
        assert!(parts
            .iter()
            .all(|p| p.len() <= 1000 && !p.starts_with('\n')));
        assert_eq!(parts.join("\n"), text);
        assert_eq!(split_entries("short\n", 1000), vec!["short"]);
        assert_eq!(
            split_entries(&"é".repeat(10), 5),
            vec!["éé", "éé", "éé", "éé", "éé"]
        );
    }
}
