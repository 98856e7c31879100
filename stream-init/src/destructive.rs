//! Changes that lower what protects stored messages: fewer replicas, or a limit (`max_age`,
//! `max_msgs`, `max_bytes`; a bucket's `history`, `ttl`, `max_bytes`) under which the server
//! deletes messages or values it keeps today. They are planned like any update but applied
//! only when explicitly allowed (`--allow-destructive`, or `allow_destructive = true` in the
//! host's config).

use std::time::Duration;

use async_nats::jetstream::stream;

/// Destructive changes were planned and not allowed; nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing changes that lower what protects stored messages (nothing was touched):\n  - {}\n\
     Change the spec (or the overlay: is a dev overlay applied to a cluster?), or allow them \
     explicitly: stream-init apply --allow-destructive, or allow_destructive = true in jetwasm.toml",
    .0.join("\n  - ")
)]
pub struct Destructive(pub Vec<String>);

/// The destructive part of changing stream `name` from `old` to `new`, one line per field.
pub fn changes(name: &str, old: &stream::Config, new: &stream::Config) -> Vec<String> {
    let at = format!("stream {name}");
    let mut found: Vec<String> = fewer_replicas(&at, "stream", old, new)
        .into_iter()
        .collect();
    found.extend(lowered_limits(
        &at,
        [
            (
                "max_age",
                lowers(age(old.max_age), age(new.max_age)),
                "older messages",
            ),
            (
                "max_msgs",
                lowers(count(old.max_messages), count(new.max_messages)),
                "the oldest messages past the count",
            ),
            (
                "max_bytes",
                lowers(count(old.max_bytes), count(new.max_bytes)),
                "the oldest messages past the size",
            ),
        ],
    ));
    found
}

/// The destructive part of changing key-value bucket `bucket`'s stream from `old` to `new`,
/// one line per field, named as in the spec (`history`, `ttl`).
pub fn kv_changes(bucket: &str, old: &stream::Config, new: &stream::Config) -> Vec<String> {
    let at = format!("kv {bucket}");
    let mut found: Vec<String> = fewer_replicas(&at, "bucket", old, new)
        .into_iter()
        .collect();
    found.extend(lowered_limits(
        &at,
        [
            (
                "history",
                lowers(
                    count(old.max_messages_per_subject),
                    count(new.max_messages_per_subject),
                ),
                "older values of each key",
            ),
            (
                "ttl",
                lowers(age(old.max_age), age(new.max_age)),
                "older values",
            ),
            (
                "max_bytes",
                lowers(count(old.max_bytes), count(new.max_bytes)),
                "the oldest values past the size",
            ),
        ],
    ));
    found
}

/// `at: replicas 3 → 1 ...` when `new` keeps fewer copies of the `what` than `old`.
fn fewer_replicas(
    at: &str,
    what: &str,
    old: &stream::Config,
    new: &stream::Config,
) -> Option<String> {
    let (from, to) = (old.num_replicas.max(1), new.num_replicas.max(1));
    (to < from).then(|| {
        format!(
            "{at}: replicas {from} → {to} keeps fewer copies: losing one server can then lose the {what}"
        )
    })
}

/// One line per limit that was lowered: (field, lowered, what the server then deletes).
fn lowered_limits(at: &str, limits: [(&str, bool, &str); 3]) -> Vec<String> {
    limits
        .into_iter()
        .filter(|(_, lowered, _)| *lowered)
        .map(|(field, _, what)| format!("{at}: a lower {field} makes the server delete {what}"))
        .collect()
}

/// `None` is unlimited: a limit is lowered when it goes from unlimited to some, or down.
fn lowers<T: Ord>(old: Option<T>, new: Option<T>) -> bool {
    match (old, new) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(old), Some(new)) => new < old,
    }
}

fn age(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn count(n: i64) -> Option<i64> {
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> stream::Config {
        stream::Config {
            name: "ORDERS".into(),
            num_replicas: 3,
            max_age: Duration::from_secs(24 * 3600),
            max_messages: 1_000_000,
            max_bytes: -1,
            ..Default::default()
        }
    }

    #[test]
    fn fewer_replicas_and_lower_limits_are_destructive() {
        let new = stream::Config {
            num_replicas: 1,
            max_age: Duration::from_secs(3600),
            max_messages: 10,
            max_bytes: 1 << 20,
            ..orders()
        };
        let found = changes("ORDERS", &orders(), &new);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("stream ORDERS: replicas 3 → 1"),
            "{found:?}"
        );
        assert!(found[1].contains("max_age") && found[2].contains("max_msgs"));
        assert!(
            found[3].contains("max_bytes"),
            "unlimited → 1MiB: {found:?}"
        );
    }

    #[test]
    fn growing_or_lifting_limits_is_not_destructive() {
        let new = stream::Config {
            num_replicas: 5,
            max_age: Duration::ZERO,
            max_messages: 2_000_000,
            max_bytes: -1,
            ..orders()
        };
        assert!(changes("ORDERS", &orders(), &new).is_empty());
        assert!(changes("ORDERS", &orders(), &orders()).is_empty());
        // Replicas 0 and 1 both mean one copy.
        let zero = stream::Config {
            num_replicas: 0,
            ..Default::default()
        };
        let one = stream::Config {
            num_replicas: 1,
            ..Default::default()
        };
        assert!(changes("S", &one, &zero).is_empty());
    }

    #[test]
    fn bucket_changes_are_named_as_in_the_spec() {
        let old = stream::Config {
            name: "KV_carts".into(),
            num_replicas: 3,
            max_messages_per_subject: 5,
            max_bytes: -1,
            ..Default::default()
        };
        let new = stream::Config {
            num_replicas: 1,
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 20,
            ..old.clone()
        };
        let found = kv_changes("carts", &old, &new);
        assert_eq!(
            found,
            [
                "kv carts: replicas 3 → 1 keeps fewer copies: losing one server can then lose the bucket",
                "kv carts: a lower history makes the server delete older values of each key",
                "kv carts: a lower ttl makes the server delete older values",
                "kv carts: a lower max_bytes makes the server delete the oldest values past the size",
            ]
        );
        assert!(kv_changes("carts", &new, &old).is_empty());
    }
}
