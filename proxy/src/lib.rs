//! kproxy, the agent: sources, sync loop, dataplanes and servers.
//!
//! ```text
//! source (manifests | kube) ──snapshot──▶ model::build ──ProxyModel/diff──▶ Dataplane ──▶ kernel
//!                         ▲                                                    │
//!                         └───────── sync loop (one task owns all state) ◀─────┘
//! ```

pub mod app;
pub mod backends;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod dump;
pub mod health;
pub mod healthcheck;
pub mod metrics;
pub mod mounts;
pub mod servers;
pub mod source;
pub mod sync;
