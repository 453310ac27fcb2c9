//! Helpers for the end-to-end tests in `tests/tests/`: finding the built binaries and the
//! shared fixtures.
