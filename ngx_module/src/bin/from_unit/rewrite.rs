//! Unit's `rewrite` as nginx's: Unit parses the rewritten text as a request target, nginx takes
//! it as the URI as it is.

/// A `rewrite` as nginx's `rewrite` should write it, and why the URI nginx gets may still differ
/// from Unit's. Unit parses the rewritten text as a request target: it drops a query there (the
/// request's stays), decodes `%XX`, merges slashes and resolves `.` and `..`; nginx takes the
/// text as the URI as it is, and a literal `?` in it would put a query before the request's.
pub(super) fn rewrite_template(text: &str) -> (String, Option<String>) {
    let path = merge_slash_before_uri(text.split('?').next().unwrap_or(text));
    let (literal, names) = split_variables(&path);
    let mut unlike = Vec::new();
    if literal.contains('%') {
        unlike.push("a %XX escape (Unit decodes it, nginx keeps it)".to_owned());
    }
    if literal.contains("//")
        || literal
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        unlike.push(
            "an empty, `.` or `..` segment (Unit merges or resolves it, nginx keeps it)".to_owned(),
        );
    }
    for name in names {
        let raw = name == "request_uri"
            || name == "request_line"
            || ["arg_", "cookie_", "header_"]
                .iter()
                .any(|p| name.starts_with(p));
        if raw {
            unlike.push(format!("${name}, whose value may hold a `?`, `%XX`, `//` or `..` (Unit parses the result as a request target, nginx keeps it as it is)"));
        }
    }
    let reason = (!unlike.is_empty()).then(|| {
        format!(
            "the URI this gives may differ from Unit's: {}; check what the app or route gets",
            unlike.join("; ")
        )
    });
    (path, reason)
}

/// A Unit string's text around its variables (each one a NUL, so that no segment spans one),
/// and the variables' names.
fn split_variables(text: &str) -> (String, Vec<&str>) {
    let mut literal = String::new();
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        literal.push('\0');
        rest = &rest[i + 1..];
        let (name, len) = match rest.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').unwrap_or(inner.len());
                (&inner[..end], (end + 2).min(rest.len()))
            }
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            }
        };
        names.push(name);
        rest = &rest[len..];
    }
    literal.push_str(rest);
    (literal, names)
}

/// `/$uri` as `$uri`: the URI starts with a slash of its own, and Unit merges the two where
/// nginx would keep both.
fn merge_slash_before_uri(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("/$") {
        let after = &rest[i + 1..];
        let whole = after.starts_with("${uri}")
            || (after.starts_with("$uri")
                && !after[4..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        out.push_str(&rest[..if whole { i } else { i + 1 }]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_slash_right_before_the_uri_variable_is_merged() {
        assert_eq!(merge_slash_before_uri("/app/$uri"), "/app$uri");
        assert_eq!(merge_slash_before_uri("/${uri}/x/$uri"), "${uri}/x$uri");
        assert_eq!(
            merge_slash_before_uri("/a/$uri_x/$urix/$host"),
            "/a/$uri_x/$urix/$host"
        );
    }
}
