//! The jetwasm host: runs WebAssembly components as JetStream message handlers and
//! publishers.
//!
//! The modules by stage, in the order a message meets them:
//! - **start**: [`run`] (and [`up`], a local server first) reads the [`config`], applies the
//!   streams with stream-init, and [`components`] loads every component through the
//!   [`loader`] (with the [`compile_cache`]) on the [`engine`]; [`deployments`] starts them
//!   and adds, replaces and removes the handlers folder's drop-ins ([`drop_in`]) as the
//!   [`folder`] watcher sees them change, and the fleet's ([`registry`]), [`launch`] starting
//!   and stopping them;
//! - **pull**: [`consumer`] binds each handler's durable consumer ([`binding`]) and runs its
//!   lanes, each asking for messages with [`pull`], holding the ones waiting for a slot in
//!   [`waiting`]; [`watchdog`], [`liveness`] and [`sweeper`] watch over them;
//! - **one message**: [`delivery`] makes the guest's copy, calls the handler through
//!   [`dispatch`] (a batch handler's messages gathered by [`batch`]) in a [`sandbox`] (with
//!   the [`imports`]: log, config, [`publish`], [`kv`]; contract 0.1's served by 0.2's), and
//!   carries out what [`ack`] decides: ack, nak, or a [`dead_letter`] then term;
//! - **publishers**: [`timer_publisher`] (on a [`schedule`]) and [`http_publisher`] (routes on
//!   the [`listener`], which also serves metrics and health);
//! - around them: [`metrics`], [`log_budget`], [`limiter`], [`scaffold`] (`jetwasm new`) and
//!   [`check`] (`jetwasm check`), [`try_run`] (`jetwasm try`), [`fleet`] (`jetwasm deploy`, `handlers`, `rollback`,
//!   `undeploy`); [`origin`] names what a call works on, in ids and logs.

pub mod ack;
pub mod admission;
pub mod batch;
pub mod binding;
pub mod bindings;
pub mod buckets;
pub mod check;
pub mod compile_cache;
pub mod components;
pub mod config;
pub mod consumer;
mod contract_0_1;
pub mod dead_letter;
pub mod dead_letters;
pub mod delivery;
pub mod deployments;
pub mod dev;
pub mod dispatch;
pub mod drop_in;
pub mod engine;
pub mod fair_share;
pub mod fleet;
pub mod folder;
mod guest_output;
mod heap;
pub mod http_publisher;
pub mod imports;
pub mod kv;
pub mod launch;
pub mod limiter;
pub mod listener;
pub mod liveness;
pub mod loader;
pub mod log_budget;
pub mod metrics;
pub mod ordering;
pub mod origin;
pub mod publish;
pub mod pull;
pub mod quota;
pub mod registry;
pub mod reload;
pub mod replay;
pub mod response_body;
pub mod run;
pub mod sandbox;
pub mod scaffold;
pub mod schedule;
pub mod shadow;
pub mod status;
pub mod sweeper;
pub mod telemetry;
pub mod tenant;
pub mod timer_publisher;
pub mod topology;
pub mod trace;
pub mod try_run;
pub mod up;
pub mod waiting;
pub mod watchdog;
