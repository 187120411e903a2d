//! Behaviour tests of the whole model, from manifests to verdicts.

mod diff;
mod dual_stack;
mod endpoints;
mod fixtures;
mod ignore;
mod manifest;
mod services;
mod topology;
mod bad_input;
mod verdicts;
