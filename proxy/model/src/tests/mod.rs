//! Behaviour tests of the whole model, from manifests to verdicts.

mod bad_input;
mod diff;
mod dual_stack;
mod endpoints;
mod fixtures;
mod ignore;
mod incremental;
mod manifest;
mod services;
mod topology;
mod verdicts;
