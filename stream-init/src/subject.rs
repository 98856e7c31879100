//! NATS subject rules: validity, and whether one subject pattern lies inside another.

/// Checks that `subject` is a well-formed subject or pattern: non-empty tokens separated by
/// `.`, `*` matching one token, `>` only as the last token.
pub fn validate(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("is empty");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("has an empty token");
        }
        if token.chars().any(char::is_whitespace) {
            return Err("contains whitespace");
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err("uses a wildcard inside a token");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err("has '>' before the last token");
        }
    }
    Ok(())
}

/// True when every subject matched by `inner` is also matched by `outer`.
pub fn is_subset(inner: &str, outer: &str) -> bool {
    let inner: Vec<&str> = inner.split('.').collect();
    let outer: Vec<&str> = outer.split('.').collect();
    for (i, o) in outer.iter().enumerate() {
        if *o == ">" {
            return inner.len() > i;
        }
        let Some(t) = inner.get(i) else {
            return false;
        };
        match (*o, *t) {
            ("*", ">") => return false,
            ("*", _) => {}
            (o, t) if o == t => {}
            _ => return false,
        }
    }
    inner.len() == outer.len()
}

/// True when some subject is matched by both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) if *x == "*" || *y == "*" || x == y => {}
            _ => return false,
        }
    }
    true
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
        ] {
            assert_eq!(overlaps(a, b), expected, "{a} / {b}");
            assert_eq!(overlaps(b, a), expected, "{b} / {a}");
        }
    }
}
