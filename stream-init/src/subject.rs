//! NATS subject rules: validity, and whether one subject pattern lies inside another.

/// Checks that `subject` is a well-formed subject or pattern: non-empty tokens separated by
/// `.`, `*` matching one token, `>` only as the last token.
pub fn validate(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("is empty");
    }
    // Token by token, without collecting them: a publish is checked on every call.
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err("has an empty token");
        }
        if token.chars().any(char::is_whitespace) {
            return Err("contains whitespace");
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err("uses a wildcard inside a token");
        }
        if token == ">" && tokens.peek().is_some() {
            return Err("has '>' before the last token");
        }
    }
    Ok(())
}

/// True when every subject matched by `inner` is also matched by `outer`.
pub fn is_subset(inner: &str, outer: &str) -> bool {
    let mut inner = inner.split('.');
    for o in outer.split('.') {
        if o == ">" {
            return inner.next().is_some();
        }
        let Some(t) = inner.next() else {
            return false;
        };
        match (o, t) {
            ("*", ">") => return false,
            ("*", _) => {}
            (o, t) if o == t => {}
            _ => return false,
        }
    }
    inner.next().is_none()
}

/// True when some subject is matched by both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_tokens_and_wildcards() {
        assert!(validate("orders.*").is_ok());
        assert!(validate("orders.>").is_ok());
        assert!(validate("a.b.c").is_ok());
        assert!(validate("").is_err());
        assert!(validate("orders..x").is_err());
        assert!(validate("orders.>.x").is_err());
        assert!(validate("orders.a*").is_err());
        assert!(validate("or ders").is_err());
        assert!(validate(">").is_ok());
        assert!(validate("a.").is_err());
    }

    #[test]
    fn subset_follows_wildcards() {
        assert!(is_subset("orders.created", "orders.*"));
        assert!(is_subset("orders.*", "orders.*"));
        assert!(is_subset("orders.*", "orders.>"));
        assert!(is_subset("orders.a.b", "orders.>"));
        assert!(is_subset("orders.>", "orders.>"));
        assert!(!is_subset("orders.a.b", "orders.*"));
        assert!(!is_subset("orders.>", "orders.*"));
        assert!(!is_subset("orders", "orders.>"));
        assert!(!is_subset("orders.*", "orders.created"));
        assert!(!is_subset("payments.x", "orders.*"));
        assert!(!is_subset("orders.a", "orders"));
        assert!(is_subset("orders", "orders"));
        assert!(is_subset("a.b", ">"));
    }

    #[test]
    fn overlap_is_symmetric_and_wildcard_aware() {
        for (a, b, expected) in [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.>", true),
            ("orders.*", "payments.*", false),
            ("orders.*", "orders.a.b", false),
            ("*.created", "orders.*", true),
            (">", "anything.at.all", true),
            ("a.b", "a.b.c", false),
            ("a.b", "a.b", true),
            ("a.*", "a", false),
        ] {
            assert_eq!(overlaps(a, b), expected, "{a} / {b}");
            assert_eq!(overlaps(b, a), expected, "{b} / {a}");
        }
    }
}
