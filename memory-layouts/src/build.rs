//! Helpers for the firmware build scripts (`bootloader/build.rs`, `app/build.rs`).

use crate::{render_memory_x, Board, Role};
use std::{env, fs, path::PathBuf};

/// Environment variable holding the image-signing public keys the firmware trusts: 32-byte Ed25519
/// keys in hex, comma-separated. `cargo xtask build` sets it from `--key`.
pub const PUBKEY_ENV: &str = "ALIYUN_OTA_PUBKEYS";

/// The board chosen by the crate's board feature (named as [`Board::name`]); exactly one must be on.
pub fn board_from_features() -> Board {
    let on: Vec<Board> = Board::ALL
        .into_iter()
        .filter(|b| {
            let var = format!("CARGO_FEATURE_{}", b.name().to_uppercase().replace('-', "_"));
            env::var_os(var).is_some()
        })
        .collect();
    match on.as_slice() {
        [b] => *b,
        _ => {
            let names: Vec<&str> = Board::ALL.iter().map(|b| b.name()).collect();
            panic!(
                "enable exactly one board feature ({}); got {on:?}. \
                 Build firmware with `cargo xtask build --board <board>`.",
                names.join(", ")
            )
        }
    }
}

/// Renders `memory.x` for `role` into OUT_DIR and passes the link arguments (thumb targets only).
/// Also writes `keys.rs` with `pub static TRUSTED_KEYS: [[u8; 32]; N]` from [`PUBKEY_ENV`].
pub fn firmware(role: Role) -> Board {
    println!("cargo:rerun-if-changed=../memory-layouts/src");
    println!("cargo:rerun-if-env-changed={PUBKEY_ENV}");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let board = board_from_features();
    fs::write(out.join("keys.rs"), keys_rs()).unwrap();
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        fs::write(out.join("memory.x"), render_memory_x(board.layout(), role)).unwrap();
        println!("cargo:rustc-link-search={}", out.display());
        println!("cargo:rustc-link-arg=--nmagic");
        println!("cargo:rustc-link-arg=-Tlink.x");
    }
    board
}

fn keys_rs() -> String {
    let Ok(list) = env::var(PUBKEY_ENV) else {
        panic!(
            "{PUBKEY_ENV} is not set: the firmware must know which keys sign its images. \
             Build with `cargo xtask build --board <board> [--key KEY.pem]`."
        )
    };
    let keys: Vec<String> = list
        .split(',')
        .map(|h| {
            let h = h.trim();
            assert!(
                h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()),
                "{PUBKEY_ENV}: {h:?} is not 64 hex digits"
            );
            let bytes: Vec<String> = (0..32).map(|i| format!("0x{}", &h[2 * i..2 * i + 2])).collect();
            format!("    [{}],\n", bytes.join(", "))
        })
        .collect();
    // shared::image::MAX_KEYS: BOOT_RECORD keeps one revocation bit per slot in a u32.
    assert!(keys.len() <= 32, "{PUBKEY_ENV}: {} keys, at most 32 (one revocation bit each)", keys.len());
    format!(
        "/// Ed25519 keys whose signatures this firmware accepts (from {PUBKEY_ENV}), in slot order:\n\
         /// an image's REVOKE_KEYS names these slots.\n\
         pub static TRUSTED_KEYS: [[u8; 32]; {}] = [\n{}];\n",
        keys.len(),
        keys.concat()
    )
}
