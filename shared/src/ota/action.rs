//! What the machine asks the driver to do.

use super::Resume;
use crate::boot::Floor;
use core::ops::Range;

/// An output of the machine. Borrowed data lives in the machine until the next call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Publish `payload` on `topic`: at QoS 0, or with `qos1: Some(pid)` at QoS 1 with that packet
    /// id, then report [`super::Event::Acked`] when its PUBACK comes.
    Publish {
        /// topic name
        topic: &'a str,
        /// JSON
        payload: &'a [u8],
        /// QoS 1 with this packet id (version reports and terminal progress)
        qos1: Option<u16>,
    },
    /// Run the new image's self-test, then report [`super::Event::SelfTest`].
    RunSelfTest,
    /// Confirm the running image (embassy-boot `mark_booted`), then report
    /// [`super::Event::Confirmed`].
    Confirm,
    /// (Re)start the DFU writer at `at` (a page boundary; 0 for a fresh download).
    BeginDownload {
        /// offset in DFU
        at: u32,
    },
    /// Start applying a differential package (`shared::delta::Patcher`, the base read from
    /// ACTIVE): a fresh patcher, the DFU writer at 0. A patch is never resumed after a reset: it
    /// starts over.
    BeginPatch,
    /// Feed bytes `range` of the payload last handed in (the patch from byte `offset`) to the
    /// patcher, which writes the image it rebuilds into DFU. Report [`super::Event::PatchFailed`]
    /// if it fails; success needs no event.
    Patch {
        /// offset in the patch
        offset: u32,
        /// bytes of the last `Message` payload or `HttpBody`
        range: Range<usize>,
    },
    /// Write bytes `range` of the payload last handed in, at `offset` of DFU. Report
    /// [`super::Event::FlashFailed`] with this `offset` if it fails (at once: the machine then
    /// drops what the download still had queued); success needs no event. Take every `Write`
    /// and `Patch` before handing in the next payload: the machine checks it, and a payload that
    /// comes first drops them and fails the download as a flash write (step -4).
    Write {
        /// offset in DFU
        offset: u32,
        /// bytes of the last `Message` payload or `HttpBody`
        range: Range<usize>,
    },
    /// Read DFU `[0, len)` into [`super::OtaMachine::rehash`], then report
    /// [`super::Event::Rehashed`].
    Rehash {
        /// bytes already in DFU
        len: u32,
    },
    /// Persist this resume point (it survives resets; hand it back in `BootReport::resume`).
    SaveResume(Resume),
    /// Forget the persisted resume point.
    ClearResume,
    /// GET [`super::OtaMachine::url`] with `Range: bytes={from}-`; report the response.
    HttpGet {
        /// first byte wanted
        from: u32,
    },
    /// Drop the HTTP connection.
    HttpClose,
    /// Verify the image in DFU with our keys against `floor`, mark it for swap, then report
    /// [`super::Event::Marked`]. `patched` (the image was rebuilt from a patch since
    /// [`Action::BeginPatch`]): first check that the patch ended with its image
    /// (`Patcher::finish`; `MarkError::Patch` if not).
    VerifyAndMark {
        /// the image in DFU was written by the patcher
        patched: bool,
        /// the security counter and revoked key slots in force (raised by a confirm since boot)
        floor: Floor,
    },
    /// Reboot (the bootloader takes over: it installs a marked image, starts an unconfirmed one
    /// again while it has boot attempts left, or reverts it).
    Reset,
    /// The running image is new and knows it is broken (self-test failed, credentials refused):
    /// ask the bootloader for the revert (`shared::boot::request_revert`), then reboot. The
    /// revert is reported after the reboot.
    Revert,
    /// Have the external module `module` update itself from `url` (HTTPS, JSON escapes resolved,
    /// at most its `max_url` bytes; Quectel: `AT+QFOTADL="<url>"`), then report its URCs as
    /// [`super::Event::ModuleProgress`], the result as [`super::Event::ModuleDone`]
    /// (`Err(ModuleError::Refused)` when it answers ERROR), and its version once it is back as
    /// [`super::Event::ModuleVersion`]. The link may drop meanwhile (the module restarts).
    ModuleUpdate {
        /// its name, as in `OtaConfig::external`
        module: &'a str,
        /// the package's URL
        url: &'a str,
    },
}
