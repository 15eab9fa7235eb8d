//! The Aliyun IoT device protocol for OTA: topics, CONNECT credentials and session rules, the
//! JSON of inform / progress / firmware.get / push / get_reply, and the MQTT file-download request
//! and its binary reply frame. no_std, no allocation: uplinks are written into caller buffers, downlinks
//! are borrowed views of the received payload.

pub mod auth;
mod download;
pub mod json;
mod msg;
mod offer;
mod session;
mod topic;

pub use auth::{credentials, sign, Credentials, DeviceSecret, SignMethod, LINKSDK_TIMESTAMP};
pub use download::{
    download_request, emit_download_error, emit_download_reply, parse_download_reply, Block, BlockReply, CRC16_ARC,
};
pub use msg::{
    firmware_get, inform, progress, valid_version, DigestMethod, MAX_DESC, STEP_DOWNLOAD_FAILED, STEP_FLASH_FAILED,
    STEP_UPGRADE_FAILED, STEP_VERIFY_FAILED,
};
pub use offer::{emit_get_reply, emit_push, parse_offer, EscapedStr, ExtData, Offer, OfferFile, OfferFiles, MAX_EXT};
pub use session::{credentials_refused, securemode, RootCa, KEEP_ALIVE};
pub use topic::{Downlink, Topic, Topics};

/// What was wrong with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AlinkError {
    /// Not the JSON we expect (malformed, wrong types, too deeply nested).
    Json,
    /// A `code` that is neither the push's "1000" nor the replies' 200.
    BadCode,
    /// A field the task needs is missing or empty.
    MissingField(&'static str),
    /// A task we cannot carry out (diff package, several files, unknown digest method).
    Unsupported(&'static str),
    /// A value longer than its buffer (topic, clientId, JSON out).
    TooLong,
    /// A download reply shorter than its framing.
    FrameTooShort,
    /// A download reply whose length is not 2 + header + bSize + 2.
    LengthMismatch {
        /// bytes the header announces
        expected: usize,
        /// bytes received
        got: usize,
    },
    /// The CRC-16/ARC of the block differs from the trailer.
    CrcMismatch {
        /// computed over the data
        computed: u16,
        /// in the trailer
        trailer: u16,
    },
}

impl core::fmt::Display for AlinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AlinkError::Json => f.write_str("malformed JSON"),
            AlinkError::BadCode => f.write_str("unexpected code"),
            AlinkError::MissingField(n) => write!(f, "missing field {n}"),
            AlinkError::Unsupported(w) => write!(f, "unsupported: {w}"),
            AlinkError::TooLong => f.write_str("value too long for its buffer"),
            AlinkError::FrameTooShort => f.write_str("download reply too short"),
            AlinkError::LengthMismatch { expected, got } => {
                write!(f, "download reply of {got} bytes, expected {expected}")
            }
            AlinkError::CrcMismatch { computed, trailer } => {
                write!(f, "block CRC {computed:#06x}, trailer says {trailer:#06x}")
            }
        }
    }
}

impl core::error::Error for AlinkError {}

impl From<serde_json_core::de::Error> for AlinkError {
    fn from(_: serde_json_core::de::Error) -> Self {
        AlinkError::Json
    }
}

impl From<serde_json_core::ser::Error> for AlinkError {
    fn from(_: serde_json_core::ser::Error) -> Self {
        AlinkError::TooLong
    }
}
