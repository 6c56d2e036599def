//! `Content-Length` (and the other plain decimal numbers an app gives its server) read one way
//! only, so that the core and the server never disagree on a length.
//!
//! Both servers keep a length in a signed 64-bit `off_t`: a value above `i64::MAX` would turn
//! negative there ("no length") while the core still counted bytes against it. Such a value is
//! refused here, and so is anything but ASCII digits between optional spaces or tabs (no sign,
//! no inner space, no list of values), as nginx's own parser does for a proxied response.

/// The length a `Content-Length` value declares, if it is a valid one.
pub fn parse(value: &[u8]) -> Option<u64> {
    parse_decimal(value)
}

/// A decimal number of at most `i64::MAX`, with optional spaces or tabs around it.
pub fn parse_decimal(value: &[u8]) -> Option<u64> {
    let is_space = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !is_space(c))?;
    let end = value.iter().rposition(|c| !is_space(c))? + 1;
    let digits = &value[start..end];
    let mut n: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    (n <= i64::MAX as u64).then_some(n)
}

/// A length as the servers store it (`off_t`); `None` only for one no parser here accepts.
pub fn to_off_t(n: u64) -> Option<i64> {
    i64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b" 42\t"), Some(42));
        assert_eq!(parse(b"007"), Some(7));
        assert_eq!(parse(b"9223372036854775807"), Some(i64::MAX as u64));
        for bad in [
            &b""[..],
            b" ",
            b"-1",
            b"+1",
            b"1 2",
            b"1,1",
            b"0x10",
            b"1e3",
            b"\xd9\xa3",
            b"9223372036854775808",
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999999999",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(to_off_t(i64::MAX as u64), Some(i64::MAX));
        assert_eq!(to_off_t(i64::MAX as u64 + 1), None);
    }
}
