//! The PROVISION page (`shared::provision::decode`): never panics, a decoded record passes its
//! own field checks and encodes back to a page that decodes the same. The first byte: odd makes
//! the payload CRC right (for the length the header gives); the rest is the page.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::provision::{decode, HEADER, MAX_PAYLOAD};

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let Some((&ctl, bytes)) = data.split_first() else { return };
    let mut page = bytes.to_vec();
    if ctl & 1 == 1 && page.len() >= HEADER {
        let n = u16::from_le_bytes([page[16], page[17]]) as usize;
        if n <= MAX_PAYLOAD && HEADER + n <= page.len() {
            let crc = CRC.checksum(&page[HEADER..HEADER + n]);
            page[20..24].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let Ok(p) = decode(&page) else { return };
    let mut out = [0xFFu8; 4096];
    let n = p.encode(&mut out).expect("a decoded record encodes");
    assert_eq!(decode(&out[..n]), Ok(p), "decode(encode(p)) != p");
    assert_eq!(decode(&out), Ok(p), "the rest of an erased page is ignored");
});
