//! Compile-time behaviour of the derives: what compiles, and the exact diagnostics of what
//! does not (`tests/ui/fail/*.stderr`; regenerate with `TRYBUILD=overwrite`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
