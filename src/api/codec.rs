//! The Play stream's codec: pre-encoded responses and small buffers.
//!
//! - Responses are [`Outbound`]: the bytes of an already-encoded
//!   `ServerMessage`. A history event is encoded once, by the first recipient's
//!   stream, and every other recipient writes the same cached bytes.
//! - tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB
//!   decode buffer for every stream, which alone would exceed our budget of
//!   6 KiB per idle stream. This codec starts both small and lets them grow
//!   with the messages actually sent.

use bytes::{BufMut, Bytes};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstCodec;

use crate::pb;

/// Initial size of each stream's encode and decode buffers.
const BUFFER_SIZE: usize = 256;
/// tonic's default: a batch of encoded responses is handed to HTTP/2 once it
/// reaches this size (or nothing more is ready).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// An encoded `gamesession.v1.ServerMessage`.
#[derive(Debug, Clone)]
pub struct Outbound(pub Bytes);

/// The codec of `PlayerService.Play`.
#[derive(Debug, Default, Clone)]
pub struct PlayCodec;

impl Codec for PlayCodec {
    type Encode = Outbound;
    type Decode = pb::ClientMessage;
    type Encoder = OutboundEncoder;
    type Decoder = <ProstCodec<pb::ServerMessage, pb::ClientMessage> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<pb::ServerMessage, pb::ClientMessage>::raw_decoder(settings())
    }
}

/// Writes pre-encoded messages.
#[derive(Debug, Default, Clone)]
pub struct OutboundEncoder;

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// Encodes one protobuf message.
pub fn encode(message: &pb::ServerMessage) -> Outbound {
    Outbound(Bytes::from(prost::Message::encode_to_vec(message)))
}
