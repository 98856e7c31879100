//! Carrying out a [`Plan`]: streams first, then their consumers, then key-value buckets.

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use crate::plan::{Action, Plan};

/// Makes the planned changes and returns one line per change made, e.g.
/// `created stream ORDERS`, `updated consumer ORDERS/processor: max_deliver 5 → 3` or
/// `updated kv carts: history 1 → 5`.
/// Stops at the first server error, naming the object; earlier changes stay made.
pub async fn apply(js: &jetstream::Context, plan: &Plan) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for stream in &plan.streams {
        let label = format!("stream {}", stream.name);
        put_stream(js, &stream.config, &stream.action, &label).await?;
        done.extend(describe(&label, &stream.action));

        let handle = js
            .get_stream(&stream.name)
            .await
            .with_context(|| format!("looking up {label}"))?;
        for consumer in &stream.consumers {
            let label = format!("consumer {}/{}", stream.name, consumer.durable);
            match &consumer.action {
                Action::Create => {
                    handle
                        .create_consumer_strict(consumer.config.clone())
                        .await
                        .with_context(|| format!("creating {label}"))?;
                }
                Action::Update(_) => {
                    handle
                        .update_consumer(consumer.config.clone())
                        .await
                        .with_context(|| format!("updating {label}"))?;
                }
                Action::Unchanged => {}
            }
            done.extend(describe(&label, &consumer.action));
        }
    }
    for bucket in &plan.kv {
        // A bucket is its stream: what async-nats's create_key_value sends, sent the same way.
        let label = format!("kv {}", bucket.name);
        put_stream(js, &bucket.config, &bucket.action, &label).await?;
        done.extend(describe(&label, &bucket.action));
    }
    Ok(done)
}

/// Creates or updates the stream `config` as `action` says; `label` names it in errors.
async fn put_stream(
    js: &jetstream::Context,
    config: &stream::Config,
    action: &Action,
    label: &str,
) -> anyhow::Result<()> {
    match action {
        Action::Create => {
            js.create_stream(config.clone())
                .await
                .with_context(|| format!("creating {label}"))?;
        }
        Action::Update(_) => {
            js.update_stream(config)
                .await
                .with_context(|| format!("updating {label}"))?;
        }
        Action::Unchanged => {}
    }
    Ok(())
}

fn describe(label: &str, action: &Action) -> Option<String> {
    match action {
        Action::Create => Some(format!("created {label}")),
        Action::Update(changes) => {
            let fields: Vec<String> = changes
                .iter()
                .map(|c| format!("{} {} → {}", c.field, c.old, c.new))
                .collect();
            Some(format!("updated {label}: {}", fields.join(", ")))
        }
        Action::Unchanged => None,
    }
}
