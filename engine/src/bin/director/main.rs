//! The `director` command line.
fn main() {}
