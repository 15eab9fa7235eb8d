//! Bodies of images for the `host` board, where an image cannot execute: the body describes the
//! simulated firmware. Version identity still comes from the header and TLVs, as on every board.
//!
//! ```text
//! ALIYUN-OTA-HOST-IMAGE\n
//! selftest=pass\n          (or fail: the image is rolled back)
//! 0x00 padding up to the chosen size
//! ```

/// First bytes of a host image body.
pub const HOST_MAGIC: &[u8] = b"ALIYUN-OTA-HOST-IMAGE\n";

/// Whether a host body's self-test passes; `None` if it is not a host body.
pub fn host_self_test(body: &[u8]) -> Option<bool> {
    let rest = body.strip_prefix(HOST_MAGIC)?;
    if rest.starts_with(b"selftest=pass\n") {
        Some(true)
    } else if rest.starts_with(b"selftest=fail\n") {
        Some(false)
    } else {
        None
    }
}

/// Makes a host body of `size` bytes (at least the text itself).
#[cfg(feature = "std")]
pub fn host_body(self_test_passes: bool, size: usize) -> Vec<u8> {
    let mut b = HOST_MAGIC.to_vec();
    b.extend_from_slice(if self_test_passes { b"selftest=pass\n" } else { b"selftest=fail\n" });
    if b.len() < size {
        b.resize(size, 0);
    }
    b
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn host_bodies_round_trip() {
        assert_eq!(host_self_test(&host_body(true, 100)), Some(true));
        assert_eq!(host_self_test(&host_body(false, 0)), Some(false));
        assert_eq!(host_body(true, 4096).len(), 4096);
        assert_eq!(host_self_test(b"\x00\x01"), None);
    }
}
