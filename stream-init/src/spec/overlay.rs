//! Environment overlays: `[env.<env>.stream.<NAME>]` and `[env.<env>.kv.<BUCKET>]` tables
//! merged over the declarations they name, as written (so a size or duration keeps its
//! exact value).

use super::*;

/// Merges `[env.<env>.stream.<NAME>]` tables over the streams they name and
/// `[env.<env>.kv.<BUCKET>]` tables over the buckets they name, each over its declaration as
/// written (`raw`, in the same order as `streams` and `buckets`). A `consumer` key in a stream
/// overlay is a table keyed by durable name, merged over that consumer.
pub(super) fn apply_overlay(
    env: &str,
    overlay: &EnvOverlay,
    raw: &RawFile,
    streams: &mut [StreamSpec],
    buckets: &mut [KvSpec],
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for (name, patch) in &overlay.stream {
        let at = format!("env.{env}.stream.{name}");
        let Some(i) = streams.iter().position(|s| &s.name == name) else {
            problems.push(format!("{at}: no stream `{name}` is declared"));
            continue;
        };
        match merged_stream(&raw.stream[i], patch) {
            Ok(merged) => streams[i] = merged,
            Err(why) => problems.push(format!("{at}: {why}")),
        }
    }
    for (name, patch) in &overlay.kv {
        let at = format!("env.{env}.kv.{name}");
        let Some(i) = buckets.iter().position(|b| &b.name == name) else {
            problems.push(format!("{at}: no bucket `{name}` is declared"));
            continue;
        };
        match merged_bucket(&raw.kv[i], patch) {
            Ok(merged) => buckets[i] = merged,
            Err(why) => problems.push(format!("{at}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn merged_stream(stream: &toml::Table, patch: &toml::Table) -> Result<StreamSpec, String> {
    let mut base = stream.clone();
    for (key, value) in patch {
        if key == "name" {
            return Err("an overlay cannot rename a stream".to_owned());
        }
        if key == "consumer" {
            merge_consumers(&mut base, value)?;
        } else {
            base.insert(key.clone(), value.clone());
        }
    }
    from_table(base)
}

fn merged_bucket(bucket: &toml::Table, patch: &toml::Table) -> Result<KvSpec, String> {
    let mut base = bucket.clone();
    for (key, value) in patch {
        if key == "name" {
            return Err("an overlay cannot rename a bucket".to_owned());
        }
        base.insert(key.clone(), value.clone());
    }
    from_table(base)
}

/// A declaration from its merged table, strictly (unknown keys are errors).
fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())
}

fn merge_consumers(base: &mut toml::Table, patch: &toml::Value) -> Result<(), String> {
    let Some(patches) = patch.as_table() else {
        return Err("`consumer` in an overlay must be a table keyed by durable name".to_owned());
    };
    let consumers = base
        .get_mut("consumer")
        .and_then(toml::Value::as_array_mut)
        .ok_or("the stream declares no consumers to override")?;
    for (durable, fields) in patches {
        let target = consumers
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .find(|c| c.get("durable").and_then(toml::Value::as_str) == Some(durable))
            .ok_or_else(|| format!("no consumer `{durable}` is declared on this stream"))?;
        let fields = fields
            .as_table()
            .ok_or_else(|| format!("consumer.{durable} must be a table"))?;
        for (key, value) in fields {
            if key == "durable" {
                return Err(format!(
                    "consumer.{durable}: an overlay cannot rename a consumer"
                ));
            }
            target.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}
