//! The one mapping from the service's typed [`Error`] to gRPC: its status
//! code, and the `Status` a call ends with.

use tonic::{Code, Status};

use crate::error::{Error, ProtocolFault};

/// The gRPC code of `err`: the one mapping, also used for the non-fatal
/// `error` messages of a Play stream.
pub fn code(err: &Error) -> Code {
    match err {
        Error::InvalidArgument { .. } | Error::UnknownMode { .. } | Error::UnknownPlayer { .. } => {
            Code::InvalidArgument
        }
        Error::SessionNotFound(_) | Error::NoSeat { .. } => Code::NotFound,
        Error::ReplayGap { .. } => Code::OutOfRange,
        Error::SessionFull(_)
        | Error::TooManySessions(_)
        | Error::TooManyWatchers(_)
        | Error::CreationLimited(_)
        | Error::SlowPlayer(_)
        | Error::RateLimited(_) => Code::ResourceExhausted,
        Error::PlayerAlreadyJoined { .. } | Error::IdempotencyConflict(_) => Code::AlreadyExists,
        Error::FailedPrecondition { .. } | Error::SessionLocked(_) => Code::FailedPrecondition,
        Error::SessionBusy(_) | Error::Draining => Code::Unavailable,
        Error::Protocol { fault, .. } => match fault {
            ProtocolFault::TooLarge => Code::OutOfRange,
            ProtocolFault::DecompressedTooLarge => Code::ResourceExhausted,
            ProtocolFault::Unsupported => Code::Unimplemented,
            ProtocolFault::Malformed => Code::Internal,
        },
        Error::JoinTimeout(_) => Code::DeadlineExceeded,
        Error::TakenOver => Code::Aborted,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) | Error::Kicked(_) | Error::ResumeSuperseded => Code::PermissionDenied,
        Error::Internal(_) => Code::Internal,
    }
}

/// The protocol fault of a status that tonic's decoder made for a client's
/// stream (the inverse of [`code`] for [`Error::Protocol`]). tonic 0.14's
/// decoder makes only these four codes; a code it may add later counts as
/// malformed.
pub fn protocol_fault(code: Code) -> ProtocolFault {
    match code {
        Code::OutOfRange => ProtocolFault::TooLarge,
        Code::ResourceExhausted => ProtocolFault::DecompressedTooLarge,
        Code::Unimplemented => ProtocolFault::Unsupported,
        _ => ProtocolFault::Malformed,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(code(&err), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a protocol error whose status code changes on its way
    /// through the session layer (the decoder's code must reach the client).
    #[test]
    fn the_decoders_codes_come_back_unchanged() {
        for code in [Code::OutOfRange, Code::ResourceExhausted, Code::Unimplemented, Code::Internal] {
            let err = Error::Protocol { fault: protocol_fault(code), message: String::new() };
            assert_eq!(super::code(&err), code);
        }
    }
}
