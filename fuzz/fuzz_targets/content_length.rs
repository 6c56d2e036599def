//! `Content-Length` (and `X-Accel-Limit-Rate`) parsing against a reference that compares digit
//! strings as text: whatever is accepted fits the servers' signed 64-bit `off_t`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ngx_wsgi::content_length::{parse, parse_decimal, to_off_t};

const MAX: &[u8] = b"9223372036854775807";

fn expected(value: &[u8]) -> Option<u64> {
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !blank(c))?;
    let end = value.iter().rposition(|c| !blank(c))? + 1;
    let digits = &value[start..end];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = match digits.iter().position(|&c| c != b'0') {
        Some(i) => &digits[i..],
        None => &b"0"[..],
    };
    // Two digit strings of the same length compare as their numbers do.
    let fits =
        significant.len() < MAX.len() || (significant.len() == MAX.len() && significant <= MAX);
    fits.then(|| std::str::from_utf8(significant).unwrap().parse().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    assert_eq!(got, expected(data), "{:?}", String::from_utf8_lossy(data));
    assert_eq!(parse_decimal(data), got);
    assert_eq!(ngx_wsgi::accel::limit_rate(data), got);
    if let Some(n) = got {
        assert_eq!(to_off_t(n), Some(n as i64));
    }
});
