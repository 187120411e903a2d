//! kproxy test support.

pub mod lab;
