//! The generated services' codec: prost's encoder, and a decoder that
//! reads each message from one contiguous slice.
//!
//! tonic hands a decoder the message as a `DecodeBuf` over its receive
//! buffer. prost reading through it advances that `BytesMut` once per
//! field and once per element of a packed field: a 1000-doc
//! `GetParamsResponse` holds 64 000 doubles, and those advances were 9 %
//! of a client's CPU (BENCHMARKS.md, "The load generator's CPU accounting,
//! and decoding from one slice"). The
//! buffer already holds the whole message, so [`SliceDecoder`] splits it
//! off without a copy (`Buf::copy_to_bytes` on a `BytesMut`) and decodes
//! from the plain slice. The bytes on the wire and the messages are the
//! same.
//!
//! An undecodable message gets a status naming its type. A request (a
//! type named `…Request`, decoded by a server) is the caller's bad
//! argument: `INVALID_ARGUMENT`. Anything else (a response or a stream
//! event, decoded by a client) is the server's fault: `INTERNAL`, as
//! gRPC's status code table has it for a message that cannot be parsed.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// A [`Codec`] of `application/grpc+proto`: encodes `T` as
/// [`ProstCodec`] does, decodes `U` with a [`SliceDecoder`].
#[derive(Debug, Clone, Copy)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes `U` from the message's bytes as one slice.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        U::decode(bytes.as_ref())
            .map(Some)
            .map_err(|error| undecodable::<U>(&error))
    }
}

/// The status of a `U` that does not decode (see the module doc).
pub fn undecodable<U>(error: &prost::DecodeError) -> Status {
    let name = std::any::type_name::<U>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    let message = format!("undecodable {name}: {error}");
    if name.ends_with("Request") {
        Status::invalid_argument(message)
    } else {
        Status::internal(message)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::v1;

    #[test]
    fn an_undecodable_request_is_the_callers_and_a_response_the_servers() {
        // Field 1 with a length running past the end.
        let cut: &[u8] = &[0x0a, 0xff];
        let error = v1::GetParamsRequest::decode(cut).unwrap_err();
        let status = undecodable::<v1::GetParamsRequest>(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("undecodable GetParamsRequest: failed to decode"),
            "{}",
            status.message()
        );
        let error = v1::GetParamsResponse::decode(cut).unwrap_err();
        let status = undecodable::<v1::GetParamsResponse>(&error);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().contains("GetParamsResponse"),
            "{}",
            status.message()
        );
        let status = undecodable::<v1::WatchParamsEvent>(&error);
        assert_eq!(status.code(), Code::Internal);
    }
}
