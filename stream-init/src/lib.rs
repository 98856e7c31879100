//! Declarative JetStream setup: read streams, durable consumers and key-value buckets from a
//! TOML spec, compare them with a server ([`plan()`]) and make the server match ([`apply()`]).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use stream_init::{connect::NatsArgs, Spec};
//! let spec = Spec::load("deploy/streams.toml".as_ref(), Some("dev"))?;
//! let args = NatsArgs::default();
//! let js = stream_init::connect::jetstream(&args, &args.url_or(None)).await?;
//! let plan = stream_init::plan(&js, &spec).await?;
//! println!("{plan}");
//! plan.check_destructive(false)?; // fewer replicas or lower limits need explicit consent
//! for line in stream_init::apply(&js, &plan).await? {
//!     println!("{line}");
//! }
//! # Ok(())
//! # }
//! ```

mod apply;
pub mod connect;
pub mod destructive;
mod fields;
pub mod plan;
pub mod spec;
pub mod subject;

pub use apply::apply;
pub use destructive::Destructive;
pub use plan::{plan, plan_consumers, Action, KvPlan, Plan, Refused};
pub use spec::{KvSpec, Spec, SpecError};
