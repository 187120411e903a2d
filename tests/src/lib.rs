//! kproxy test support.

pub mod bench;
pub mod conformance;
pub mod fakeapi;
pub mod lab;
