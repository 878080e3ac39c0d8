//! Everything that knows Teleport's gRPC API: generated code, credentials, TLS, dialing, and a
//! typed client that speaks in domain types.

pub mod pb;
