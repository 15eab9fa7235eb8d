//! The byte encoding of a script: the `ota_machine` fuzz target and the property test decode it
//! ([`super::run`]), `cargo xtask fuzz --seeds` and the property test's generator write it.
//!
//! ```text
//! setup (10 bytes): page, slot pages, block, window, retries, progress_every, flags, timeout_s,
//!                   image (2 bytes LE: < 4 a signed image, else the length of a patterned one)
//! then events until the input ends (at most MAX_EVENTS): one op byte (mod OPS) and its
//! argument bytes (below)
//! ```
//! Bytes past the end read as 0.

#![allow(missing_docs)] // op codes and flags are documented in groups

/// Events played from one script at most (a longer input plays its first ones): a download of
/// the largest image in the smallest blocks takes a few hundred.
pub const MAX_EVENTS: usize = 600;

/// Setup flags.
pub mod setup {
    /// The board downloads over HTTPS too.
    pub const HTTPS: u8 = 1;
    /// Progress at most once a second (else no interval).
    pub const PROGRESS_INTERVAL: u8 = 2;
    /// The first boot is a new image awaiting its self-test.
    pub const AWAITING_CONFIRM: u8 = 4;
    /// The first boot reports a revert (bit 3) or a refusal (bit 4).
    pub const REVERTED: u8 = 8;
    pub const REFUSED: u8 = 16;
    /// A resume point for the image's MD5 task (half of it) is persisted...
    pub const RESUME: u8 = 32;
    /// ...and DFU holds those bytes (else it is erased).
    pub const PREFILLED: u8 = 64;
    /// The device's security counter is 1.
    pub const SEC_CNT: u8 = 128;
}

/// Offer flags (first argument byte of PUSH and GET_REPLY).
pub mod offer {
    pub const HTTPS: u8 = 1;
    pub const SHA256: u8 = 2;
    pub const WRONG_DIGEST: u8 = 4;
    pub const DIFF: u8 = 8;
    pub const FILES: u8 = 16;
    pub const OTHER_MODULE: u8 = 32;
    pub const RUNNING_VERSION: u8 = 64;
    pub const BAD_VERSION: u8 = 128;
    /// Second flag byte.
    pub const NO_SIGN_METHOD: u8 = 1;
    pub const LONG_URL: u8 = 2;
    pub const NO_SIZE: u8 = 4;
    pub const OTHER_VERSION: u8 = 8;
    pub const ESCAPED_URL: u8 = 16;
    /// For the external module `modem` (else the app's, or MCU with OTHER_MODULE).
    pub const MODEM: u8 = 32;
}

/// Connected: no arguments.
pub const CONNECT: u8 = 0;
pub const DISCONNECT: u8 = 1;
/// CONNACK code (1 byte).
pub const CONNECT_REFUSED: u8 = 2;
/// A push: flags, flags2, size delta (i8), stream id (1 byte).
pub const PUSH: u8 = 3;
/// A get_reply: id (0: of the last pull, 1: the one before, else that number), then as PUSH.
pub const GET_REPLY: u8 = 4;
/// A message of arbitrary bytes: topic (mod 3: upgrade, get_reply, download_reply), length (1 byte), bytes.
pub const RAW: u8 = 5;
/// The reply to a block request in flight: which (1 byte), mode (1 byte: low 3 bits good, no id,
/// short, long, bad CRC, refused, shifted, cut; bit 3 keeps the request for a duplicate), argument (2 bytes).
pub const BLOCK: u8 = 6;
/// A message over the MQTT buffer: topic (1 byte), length (2 bytes).
pub const OVERSIZED: u8 = 7;
/// The PUBACK of a QoS 1 publish: which of the recent ones (1 byte; >= 128: a foreign pid).
pub const ACK: u8 = 8;
/// Completes the oldest self-test, confirm, rehash or verify-and-mark asked for: 1 byte (0: it failed).
pub const COMPLETE: u8 = 9;
/// Unasked-for completions (1 byte each).
pub const SELF_TEST: u8 = 10;
pub const CONFIRMED: u8 = 11;
/// The next `Write` fails (a worn or locked page): the driver hands `FlashFailed` in at once,
/// with the rest of the actions still to take. No argument.
pub const FLASH_FAILED: u8 = 12;
pub const REHASHED: u8 = 13;
pub const MARKED: u8 = 14;
/// HTTP response head: status (1 byte: 0/1 the right one, else from a list), length mode (1 byte).
pub const HTTP_RESPONSE: u8 = 15;
/// HTTP body bytes of the image from where the GET is: length (2 bytes), corrupt (1 byte).
pub const HTTP_BODY: u8 = 16;
pub const HTTP_END: u8 = 17;
/// The HTTP request failed: reason (1 byte, mod 5: connect, TLS, protocol, chunked, closed).
pub const HTTP_FAILED: u8 = 18;
/// Time passes: 2 bytes, in units of 10 ms.
pub const TICK: u8 = 19;
/// Time jumps to the machine's next timeout, which runs.
pub const TIMEOUT: u8 = 20;
/// A power cut and restart: flags (1 byte: bit 0 awaiting confirm, bit 1 reverted).
pub const REBOOT: u8 = 21;
/// The board read an external module's version: module (1 byte, mod 4: modem, gnss, an unknown
/// one, the app's), version (1 byte, mod 4: 1.3, 1.4, 1.5, not an Aliyun version).
pub const MODULE_VERSION: u8 = 22;
/// A progress URC of the module being updated: phase (1 byte: bit 0 install), percent (1 byte).
pub const MODULE_PROGRESS: u8 = 23;
/// The module's result: 1 byte (mod 6: ok, refused, download error, install 504, install 1, lost).
pub const MODULE_DONE: u8 = 24;
/// Number of ops.
pub const OPS: u8 = 25;
