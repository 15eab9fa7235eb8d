//! The OTA client as a sans-IO state machine (DESIGN.md "OTA flow").
//!
//! [`OtaMachine`] never touches a clock, a socket or flash. The driver (the app, or a test)
//! feeds it [`Event`]s with the current time through [`OtaMachine::handle`], wakes it at
//! [`OtaMachine::poll_timeout`] through [`OtaMachine::handle_timeout`], and carries out every
//! [`Action`] that [`OtaMachine::poll_action`] hands out. Every protocol decision is made here.
//!
//! ```text
//!  Booted ──new image──▶ AwaitSelfTest ──pass──▶ AwaitConfirm ──▶ AwaitTask
//!     │                      └─fail──▶ AwaitReset (bootloader reverts; reported next boot)
//!     └────────────────────────────────────────────────────────────▶ AwaitTask
//!  AwaitTask ──task for our module, fits──▶ [Rehashing ──▶] Downloading ──all bytes,
//!  digest ok──▶ AwaitMark ──our signature ok, marked──▶ AwaitReset
//!  any failure ──▶ progress -1..-4 with a desc ──▶ AwaitTask
//! ```

mod action;
mod event;
mod machine;

pub use action::Action;
pub use event::{BootOutcome, BootReport, Event, MarkError, Resume, TaskKey};
pub use machine::{OtaConfig, OtaMachine, StateName, MAX_URL};
