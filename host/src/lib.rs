//! The jetwasm host: runs WebAssembly components as JetStream message handlers.
//!
//! A message flows: durable pull consumer ([`consumer`]) → a fresh sandbox per message
//! ([`dispatch`], on the engine from [`engine`], with the imports in [`imports`]) → an outcome
//! mapped to a JetStream action ([`ack`]) → ack, nak, or a dead-letter record
//! ([`dead_letter`]) then term. [`run`] wires it together from a [`config::Config`].

pub mod ack;
pub mod binding;
pub mod bindings;
pub mod compile_cache;
pub mod components;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod delivery;
pub mod dispatch;
pub mod engine;
mod guest_output;
pub mod http;
pub mod http_guest;
pub mod imports;
pub mod limiter;
pub mod liveness;
pub mod log_budget;
pub mod metrics;
pub mod publisher;
pub mod publishing;
pub mod pull;
pub mod registry;
pub mod run;
pub mod sandbox;
pub mod scaffold;
pub mod schedule;
pub mod sweeper;
pub mod up;
pub mod waiting;
pub mod watchdog;
