//! The `Cpi` trait (the BOSH CPI API v2) and its implementations.
//!
//! Nothing is implemented here yet: the local CPI arrives with `director deploy` (issue 4).
