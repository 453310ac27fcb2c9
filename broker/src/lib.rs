//! The thin cluster broker: Open Service Broker API in front of the director.
//!
//! Nothing is implemented here yet; it comes after the director can deploy.
