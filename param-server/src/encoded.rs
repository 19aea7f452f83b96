//! A message already encoded: its bytes are written to the wire as they
//! are. A handler encodes its response where its work runs (a work slot,
//! [`crate::admission`]) and tonic only copies the bytes.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, skip_field};

/// The protobuf encoding of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// `message`'s encoding.
    pub fn of(message: &impl prost::Message) -> Self {
        Self(message.encode_to_vec())
    }

    /// Bytes that are a message's encoding (written by hand, such as
    /// [`crate::stored::StateView::encode_as_field`]'s).
    pub fn from_encoding(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Encodes as the bytes it holds; never decoded on this side (a decode
/// skips every field).
impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use posterior_proto::v1;
    use prost::Message;

    use super::*;

    #[test]
    fn the_wire_bytes_are_the_messages_own() {
        let response = v1::GetParamsResponse {
            params: vec![v1::Params {
                doc_id: 7,
                seq: 3,
                ..v1::Params::default()
            }],
        };
        let encoded = Encoded::of(&response);
        assert_eq!(encoded.encoded_len(), response.encoded_len());
        let wire = encoded.encode_to_vec();
        assert_eq!(wire, response.encode_to_vec());
        assert_eq!(
            v1::GetParamsResponse::decode(wire.as_slice()).unwrap(),
            response
        );
        assert_eq!(encoded.as_bytes(), wire.as_slice());
    }
}
