//! The topology check, made before a component runs (and by `jetwasm check --config`): a
//! stream captures every subject it writes to (a handler's dead letters, every subject in its
//! `publish` list), every KV bucket it is granted exists, a handler's consumer exists, and that consumer does not receive the
//! handler's own outputs. Every problem is found, each naming the component and the fix, so a
//! misconfigured topology fails at start rather than at the first message it hurts.

use std::path::Path;

use async_nats::jetstream;
use stream_init::subject;

use crate::config::{DropIn, DEFAULT_TENANT};
use crate::tenant::Tenant;

/// Every problem with `what`'s place in its tenant's streams, checked over the tenant's
/// connection: a subject the server refuses the tenant on the way is the problem, found at
/// once (see [`refused`]); a tenant's other problems say that it sees only its own account.
pub async fn tenant_problems(tenant: &Tenant, what: &DropIn, dead_letter: &str) -> Vec<String> {
    let spec = tenant.spec_file.as_deref();
    let check = problems(tenant.js(), what, dead_letter, spec);
    match tenant
        .connection
        .denials
        .during(crate::publish::JS_API, check)
        .await
    {
        Err(subject) => vec![refused(what, tenant, &subject)],
        Ok(problems) if *tenant.name == *DEFAULT_TENANT => problems,
        Ok(problems) => (problems.into_iter())
            .map(|p| format!("{p} [tenant {}, in its own account]", tenant.name))
            .collect(),
    }
}

/// Why `what` cannot run: the server refused its tenant `subject`.
pub fn refused(what: &DropIn, tenant: &Tenant, subject: &str) -> String {
    let kind = match what {
        DropIn::Handler(_) => "handler",
        DropIn::Publisher(_) => "publisher",
    };
    format!(
        "{kind} {}: the NATS server refused tenant {} {subject}: its permissions do not grant \
         it (a stream, consumer or subject of another tenant, or one missing from its grant)",
        what.component().name,
        tenant.name
    )
}

/// Every problem with `what`'s place in the server's streams, one line each. `dead_letter` is
/// the `[runtime] dead_letter` prefix; `streams` the spec file the host applies, if any, for
/// the advice.
pub async fn problems(
    js: &jetstream::Context,
    what: &DropIn,
    dead_letter: &str,
    streams: Option<&Path>,
) -> Vec<String> {
    let component = what.component();
    let (kind, name) = match what {
        DropIn::Handler(_) => ("handler", &component.name),
        DropIn::Publisher(_) => ("publisher", &component.name),
    };
    let at = format!("{kind} {name}");
    let spec = streams.map_or_else(
        || "the streams spec".to_owned(),
        |file| file.display().to_string(),
    );
    let mut problems = Vec::new();
    let outputs = component.publish.allowed();
    for output in outputs {
        if let Err(why) = captured(js, output).await {
            problems.push(format!(
                "{at}: publishes to {output:?}, but {why}: add a stream with subjects [{output:?}] to {spec}, or drop it from `publish`"
            ));
        }
    }
    for grant in &component.kv {
        let bucket = &grant.bucket;
        if let Err(why) = bucket_exists(js, bucket).await {
            problems.push(format!(
                "{at}: uses the kv bucket {bucket:?}, but {why}: declare it in {spec} ([[kv]] name = {bucket:?}), or drop it from `kv`"
            ));
        }
    }
    let DropIn::Handler(handler) = what else {
        return problems;
    };
    let (stream, consumer) = (&handler.stream, &handler.consumer);
    let dead_letters = format!("{dead_letter}.{stream}.{consumer}");
    if let Err(why) = captured(js, &dead_letters).await {
        problems.push(format!(
            "{at}: its dead letters go to {dead_letters:?}, but {why}: add a stream with subjects [\"{dead_letter}.>\"] to {spec}"
        ));
    }
    let Ok(mut found_stream) = js.get_stream(stream).await else {
        problems.push(format!(
            "{at}: no stream {stream}: declare it in {spec} (or fix `stream`)"
        ));
        return problems;
    };
    let info = match found_stream.info().await {
        Ok(info) => info.clone(),
        Err(e) => {
            problems.push(format!("{at}: reading stream {stream}: {e}"));
            return problems;
        }
    };
    // A consumer the manifest declares is made when the handler loads: check its declaration.
    let declared_filters = handler
        .own_consumer
        .as_ref()
        .map(|c| c.filter_subjects.clone());
    let filters = match declared_filters {
        Some(filters) => filters,
        None => {
            let found = found_stream.consumer_info(consumer).await.ok();
            let Some(found) = found else {
                problems.push(format!(
                    "{at}: no consumer {stream}/{consumer}: declare it under the stream {stream} ([[stream.consumer]] durable = {consumer:?}) in {spec}, or in the manifest's [consumer]"
                ));
                return problems;
            };
            let config = found.config;
            if !config.filter_subjects.is_empty() {
                config.filter_subjects
            } else if !config.filter_subject.is_empty() {
                vec![config.filter_subject]
            } else {
                Vec::new()
            }
        }
    };
    // No filter: the consumer delivers all of the stream's subjects.
    let filters = if filters.is_empty() {
        info.config.subjects.clone()
    } else {
        filters
    };
    for output in outputs {
        let in_stream = info
            .config
            .subjects
            .iter()
            .any(|s| subject::overlaps(output, s));
        if let Some(filter) = filters.iter().find(|f| subject::overlaps(output, f)) {
            if in_stream {
                problems.push(format!(
                    "{at}: its consumer {stream}/{consumer} (filter {filter:?}) would deliver the handler's own outputs on {output:?} back to it: narrow the consumer's filter_subjects"
                ));
            }
        }
    }
    problems
}

/// Ok when the KV bucket `bucket` exists, else why not.
async fn bucket_exists(js: &jetstream::Context, bucket: &str) -> Result<(), String> {
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(api)
            if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Err("there is no such bucket".to_owned())
        }
        Err(e) => Err(format!("asking for it failed ({e})")),
    }
}

/// Ok when a stream captures `subject` (some of it, for a wildcard), else why not.
async fn captured(js: &jetstream::Context, subject: &str) -> Result<(), String> {
    match js.stream_by_subject(subject).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
            Err("no stream captures it".to_owned())
        }
        Err(e) => Err(format!("asking which stream captures it failed ({e})")),
    }
}
