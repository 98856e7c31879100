//! W3C trace context across the host: a handler call's `traceparent` is the one its message
//! carries, an HTTP publisher's the one its request carries, and every publish a call makes
//! carries a child of it (the same trace id, a new span id) unless the guest set one itself,
//! so a trace follows an order from the HTTP intake through its handlers to their outputs. A
//! call with none starts a new trace.

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` in `headers` (any case), if any.
pub fn find<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    (headers.into_iter())
        .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
        .map(|(_, value)| value.to_owned())
}

/// A `traceparent` for a publish made on behalf of `parent` (a call's, if it had a valid
/// one): its trace id and flags with a new span id, or a new sampled trace.
pub fn child(parent: Option<&str>) -> String {
    let (trace_id, flags) = match parent.and_then(parse) {
        Some((trace_id, flags)) => (trace_id.to_owned(), flags.to_owned()),
        None => (format!("{:032x}", fastrand::u128(1..)), "01".to_owned()),
    };
    format!("00-{trace_id}-{:016x}-{flags}", fastrand::u64(1..))
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && flags.len() == 2
        && flags.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let child = child(Some(PARENT));
        let (trace_id, flags) = parse(&child).expect("valid");
        assert_eq!(
            (trace_id, flags),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
        );
        assert_ne!(&child[36..52], "00f067aa0ba902b7", "a new span id");
    }

    #[test]
    fn without_a_valid_parent_a_new_trace_starts() {
        for parent in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
        ] {
            let child = child(parent);
            let (trace_id, flags) = parse(&child).expect("valid");
            assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{parent:?}");
            assert_eq!(flags, "01");
        }
        assert_eq!(find([("TraceParent", PARENT)]).as_deref(), Some(PARENT));
    }
}
