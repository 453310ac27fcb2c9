//! What the bus carries: the largest message and the longest agent id. The broker, the
//! client, the account policy and the errors that name these limits share them.

/// The largest message the bus carries (nats-server's default `max_payload`, and the cap
/// BOSH's agent puts on its answers).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The longest agent id accepted (ids are subject tokens and user names).
pub(crate) const MAX_AGENT_ID: usize = 128;
