//! Posterior's wire contract, package `posterior.v1`, generated from the
//! `.proto` files beside this crate.
//!
//! Layout:
//! - `v1`: messages (`JoinedSample`, `Params`, `ParamUpdate`, `VersionSpec`)
//!   and the `ParamService` / `AdminService` clients and servers.
//! - `FILE_DESCRIPTOR_SET`: encoded descriptors, for gRPC reflection.
//! - [`codec`]: the services' codec (prost, decoding from one slice).
//! - [`conn`]: the connection wrapper of both ends, which sends a small
//!   gRPC message (a request, a response) in one TCP segment.
//!
//! Generated types stop at the service boundary: the learner and the
//! param-server convert them into domain types with `TryFrom`, which is
//! where bad input is rejected.

pub mod codec;
pub mod conn;

/// Generated code of package `posterior.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("posterior.v1");
}

/// Encoded `FileDescriptorSet` of `posterior.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/posterior_v1_descriptor.bin"));
