//! The server fixture lives in the test kit (`lbfleet_tests::server`); `mod common;` keeps the tests' imports.

pub use lbfleet_tests::server::*;
