//! kproxy test support.

pub mod conformance;
pub mod fakeapi;
pub mod lab;
