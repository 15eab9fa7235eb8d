//! The MQTT stream block reply frame (`shared::alink::parse_download_reply`): never panics, a
//! `Data` block lies inside the frame with a good CRC, and parse(emit(x)) == x. Each input is
//! also tried with its CRC trailer made right, so the fuzzer gets past the checksum.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::alink::{emit_download_reply, parse_download_reply, BlockReply, CRC16_ARC};

fn check(frame: &[u8]) {
    let Ok(BlockReply::Data(b)) = parse_download_reply(frame) else { return };
    let at = b.data.as_ptr() as usize - frame.as_ptr() as usize;
    assert!(at >= 2 && at + b.data.len() + 2 == frame.len(), "the block is not where the frame says");
    let trailer = u16::from_le_bytes([frame[frame.len() - 2], frame[frame.len() - 1]]);
    assert_eq!(CRC16_ARC.checksum(b.data), trailer, "a bad CRC passed");
    // Re-emitted as the console would (ids and tokens without escapes, as the console sends them;
    // a raw control character the parser let through would come back escaped).
    let plain = |s: Option<&str>| s.is_none_or(|s| !s.contains(['\\', '"']) && !s.contains(char::is_control));
    let (Some(id), true) = (b.id, plain(b.id) && plain(b.token)) else { return };
    let mut out = vec![0u8; frame.len() + 256];
    if let Ok(n) = emit_download_reply(&mut out, id, b.token, b.file_length, b.offset, b.data) {
        let Ok(BlockReply::Data(back)) = parse_download_reply(&out[..n]) else {
            panic!("an emitted block does not parse: {:?}", String::from_utf8_lossy(&out[..n]))
        };
        assert_eq!(back, b);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same frame with its trailer fixed, assuming the block runs to the end of the input.
    if let Some(n) = data.get(..2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) {
        if data.len() >= 2 + n + 2 {
            let mut f = data.to_vec();
            let end = f.len() - 2;
            let crc = CRC16_ARC.checksum(&f[2 + n..end]);
            f[end..].copy_from_slice(&crc.to_le_bytes());
            check(&f);
        }
    }
});
