//! The on-VM agent and the wire types of its bus API.
//!
//! Nothing is implemented here yet: the agent arrives with `director deploy` (issue 4). The
//! crate exists so the workspace has the layout of `ARCHITECTURE.md` from the start.
