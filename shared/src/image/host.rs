//! Bodies of images for the `host` board, where an image cannot execute: the body describes the
//! simulated firmware. Version identity still comes from the header and TLVs, as on every board.
//!
//! ```text
//! ALIYUN-OTA-HOST-IMAGE\n
//! selftest=pass\n          (or fail: the image is rolled back)
//! login=fail\n             (optional: this firmware sends a wrong password, as a broken build would)
//! 0x00 padding up to the chosen size
//! ```

/// First bytes of a host image body.
pub const HOST_MAGIC: &[u8] = b"ALIYUN-OTA-HOST-IMAGE\n";

/// How a simulated host firmware behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBehaviour {
    /// Its self-test passes.
    pub self_test: bool,
    /// It logs in with the right password (a build with a broken credential path does not).
    pub login: bool,
}

impl Default for HostBehaviour {
    fn default() -> Self {
        HostBehaviour { self_test: true, login: true }
    }
}

/// How a host body's firmware behaves; `None` if it is not a host body.
pub fn host_behaviour(body: &[u8]) -> Option<HostBehaviour> {
    let rest = body.strip_prefix(HOST_MAGIC)?;
    let (self_test, rest) = if let Some(r) = rest.strip_prefix(b"selftest=pass\n") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix(b"selftest=fail\n") {
        (false, r)
    } else {
        return None;
    };
    Some(HostBehaviour { self_test, login: !rest.starts_with(b"login=fail\n") })
}

/// Makes a host body of `size` bytes (at least the text itself).
pub fn host_body(b: HostBehaviour, size: usize) -> Vec<u8> {
    let mut v = HOST_MAGIC.to_vec();
    v.extend_from_slice(if b.self_test { b"selftest=pass\n" } else { b"selftest=fail\n" });
    if !b.login {
        v.extend_from_slice(b"login=fail\n");
    }
    if v.len() < size {
        v.resize(size, 0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bodies_round_trip() {
        let fail = HostBehaviour { self_test: false, ..Default::default() };
        let no_login = HostBehaviour { login: false, ..Default::default() };
        for b in [HostBehaviour::default(), fail, no_login] {
            assert_eq!(host_behaviour(&host_body(b, 100)), Some(b));
        }
        assert_eq!(host_body(HostBehaviour::default(), 4096).len(), 4096);
        assert_eq!(host_behaviour(b"\x00\x01"), None);
    }
}
