//! The OTA client as a sans-IO state machine.
//!
//! [`OtaMachine`] never touches a clock, a socket or flash. The driver (the app, or a test)
//! feeds it [`Event`]s with the current time through [`OtaMachine::handle`], wakes it at
//! [`OtaMachine::poll_timeout`] through [`OtaMachine::handle_timeout`], and carries out every
//! [`Action`] that [`OtaMachine::poll_action`] hands out. Every protocol decision is made here.
//!
//! ```text
//!  Booted ──new image──▶ AwaitSelfTest ──pass──▶ AwaitSession ──connected──▶ AwaitConfirm ──▶ AwaitTask
//!     │                      │                      └─credentials refused / deadline──▶ AwaitReset (revert)
//!     │                      └─fail──▶ AwaitReset (the bootloader reverts; reported next boot)
//!     └────────────────────────────────────────────────────────────────────────────▶ AwaitTask
//!  AwaitTask ──task for our module──▶ we cannot: progress -1 with the reason (once), AwaitTask
//!            ──we can──▶ [Rehashing ──▶] Downloading ──all bytes, digest ok──▶ AwaitMark
//!            ──our signature ok, marked──▶ progress 100 (acknowledged) ──▶ AwaitReset
//!  any failure ──▶ progress -1..-4 with a typed [`Failure`] as its desc ──▶ AwaitTask
//!
//!  AwaitTask ──HTTPS task for an external module (OtaConfig::external)──▶ progress 1,
//!            [`Action::ModuleUpdate`] ──▶ ModuleUpdating ──ModuleProgress──▶ progress 1..99
//!  ModuleUpdating ──ModuleDone(Ok)──▶ progress 100 (acknowledged) ──▶ ModuleRestarting
//!                 ──ModuleDone(Err) / no progress for module_timeout──▶ progress -1..-3 ──▶ AwaitTask
//!  ModuleRestarting ──ModuleVersion = the task's──▶ its version reported ──▶ AwaitTask
//!                   ──another version / none by module_timeout──▶ progress -1 ──▶ AwaitTask
//! ```
//!
//! One update at a time: while one runs, offers for other modules are ignored (the platform
//! re-pushes them, and the machine pulls for every module when it is idle again). Every report
//! of an external module's task carries that module's name. Version reports and terminal
//! progress (100, negative) go at QoS 1 and are sent again after a reconnect until
//! acknowledged; at connect every module whose version is known is reported (the app's first)
//! and pulled for; `firmware/get` goes again every `pull_interval`.

mod action;
mod config;
mod connect;
mod event;
mod failure;
mod machine;
#[cfg(feature = "sim")]
pub mod script;
mod task;

pub use action::Action;
pub use config::{
    check_keep_alive, ConfigError, External, OtaConfig, BLOCK_SIZES, DEFAULT_BLOCK, DEFAULT_CONFIRM,
    DEFAULT_MODULE_TIMEOUT, DEFAULT_PULL, DEFAULT_WINDOW, MAX_BLOCK, MAX_EXTERNAL, MAX_MODULE_NAME, MAX_WINDOW,
    MIN_BLOCK, QFOTADL_MAX_URL,
};
pub use connect::{Backoff, BACKOFF_BASE, BACKOFF_CAP, STEADY_SESSION};
pub use event::{
    BootOutcome, BootReport, Event, HttpError, MarkError, ModuleError, ModulePhase, Outcome, Resume, Verdict,
};
pub use failure::{Failure, FailureKind, ModuleName, MAX_PLATFORM_MSG};
pub use machine::{OtaMachine, StateName, DELTA_HEAD_RAM, MAX_URL};
pub use task::{module_of, Source, Task, TaskKey, UrlPiece};
