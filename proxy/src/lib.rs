//! kproxy, the agent: sources, sync loop, dataplanes and servers.
//!
//! ```text
//! source (manifests | kube) ──snapshot──▶ model::build ──ProxyModel/diff──▶ Dataplane ──▶ kernel
//!                         ▲                                                    │
//!                         └───────── sync loop (one task owns all state) ◀─────┘
//! ```

pub mod source;
pub mod dataplane;
pub mod health;
pub mod sync;
