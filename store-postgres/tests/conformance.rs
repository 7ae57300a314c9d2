//! The shared conformance suite of `annals::testing`, each check in a fresh schema.

mod common;

annals::conformance_tests!(common::fresh);
