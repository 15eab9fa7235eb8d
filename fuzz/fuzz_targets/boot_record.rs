//! BOOT_RECORD (`shared::boot::record`): `BootRecord::decode` of any bytes and `load` over a
//! region holding them never panic; a decoded record encodes and decodes back the same; `load`
//! returns a valid slot with the highest `seq`. The first two input bytes choose which of the 16
//! slots get their CRC made right (so the fuzzer reaches the postcard decoding); the rest is the
//! region (2 KiB: two halves of 8 slots).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::boot::record::MAX_ENCODED;
use shared::boot::BootRecord;
use shared::sim::SimFlash;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const REGION: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let _ = BootRecord::decode(data);
    let Some((ctl, bytes)) = data.split_first_chunk::<2>() else { return };
    let fix = u16::from_le_bytes(*ctl);
    let mut region = vec![0xFFu8; REGION];
    let n = bytes.len().min(REGION);
    region[..n].copy_from_slice(&bytes[..n]);
    for (i, slot) in region.chunks_mut(MAX_ENCODED).enumerate() {
        let len = u16::from_le_bytes([slot[0], slot[1]]) as usize;
        if fix & (1 << i) != 0 && 6 + len <= MAX_ENCODED {
            let crc = CRC.checksum(&slot[..2 + len]);
            slot[2 + len..6 + len].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut best: Option<u32> = None;
    for slot in region.chunks(MAX_ENCODED) {
        let Some(r) = BootRecord::decode(slot) else { continue };
        best = Some(best.map_or(r.seq, |b| b.max(r.seq)));
        let mut buf = [0u8; MAX_ENCODED];
        for write_size in [1, 4, 16] {
            let len = r.encode(&mut buf, write_size);
            assert!(len <= MAX_ENCODED && len % write_size == 0);
            assert_eq!(BootRecord::decode(&buf[..len]), Some(r), "decode(encode(r)) != r");
        }
    }
    let mut flash = SimFlash::<1024, 4>::new(REGION, 0xFF);
    flash.load(0, &region);
    let loaded = BootRecord::load(&mut flash).expect("reading the simulated flash");
    assert_eq!(loaded.map(|(_, r)| r.seq), best, "load did not pick the newest valid record");
    if let Some((at, r)) = loaded {
        let off = at.half * (REGION / 2) + at.index * MAX_ENCODED;
        assert_eq!(BootRecord::decode(&region[off..off + MAX_ENCODED]), Some(r), "load named the wrong slot");
    }
});
