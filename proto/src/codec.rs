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
//! same; so is the status of an undecodable message (`INTERNAL`, as
//! gRPC's status code table says for a message that cannot be parsed).

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
            .map_err(|error| Status::internal(error.to_string()))
    }
}
