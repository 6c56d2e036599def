//! Unit's variables as nginx's.

/// Unit's variables in a string, as nginx's (`$header_X_Foo` is `$http_x_foo`); `Err` names
/// the first one nginx has no counterpart for.
pub fn variables(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, braced) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').ok_or("an unclosed ${")?;
            (&inner[..end], end + 2)
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], end)
        };
        let nginx = match name {
            "uri" | "host" | "request_uri" | "remote_addr" | "request_id" | "status"
            | "time_local" | "body_bytes_sent" | "request_time" => name.to_owned(),
            "method" => "request_method".to_owned(),
            "request_line" => "request".to_owned(),
            n if n.starts_with("arg_") || n.starts_with("cookie_") => n.to_owned(),
            n if n.starts_with("header_") => {
                format!("http_{}", n[7..].to_ascii_lowercase().replace('-', "_"))
            }
            n if n.starts_with("response_header_") => format!(
                "sent_http_{}",
                n[16..].to_ascii_lowercase().replace('-', "_")
            ),
            n => return Err(format!("the variable ${n} has no nginx counterpart")),
        };
        out.push_str(&format!("${{{nginx}}}"));
        rest = &rest[braced..];
    }
    out.push_str(rest);
    // `${uri}` reads better as `$uri` where no name character follows.
    Ok(tidy_braces(&out))
}

fn tidy_braces(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').unwrap_or(after.len());
        let name = &after[..end];
        let next = after[end + 1..].chars().next();
        if next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&format!("${{{name}}}"));
        } else {
            out.push_str(&format!("${name}"));
        }
        rest = &after[(end + 1).min(after.len())..];
    }
    out.push_str(rest);
    out
}
