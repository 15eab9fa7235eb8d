//! The resume record in DFU's spare page (`shared::boot::resume`): `load` of any page never
//! panics, and after `save(r)` on a page the code could have written, `load` gives `r`. The first
//! byte: odd makes the CRC right of every entry that starts with the magic; the rest is the page.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::boot::resume::{load, save};
use shared::ota::Resume;
use shared::sim::SimFlash;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const PAGE: usize = 4096;
const ENTRY: usize = 32;

fn valid(e: &[u8]) -> bool {
    e[..4] == *b"OTAP" && CRC.checksum(&e[..24]).to_le_bytes() == e[24..28]
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else { return };
    let mut page = vec![0xFFu8; PAGE];
    let n = bytes.len().min(PAGE);
    page[..n].copy_from_slice(&bytes[..n]);
    if ctl & 1 == 1 {
        for e in page.chunks_mut(ENTRY).filter(|e| e[..4] == *b"OTAP") {
            let crc = CRC.checksum(&e[..24]);
            e[24..28].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut dfu = SimFlash::<PAGE, 16>::new(3 * PAGE, 0xFF);
    dfu.load(2 * PAGE, &page);
    let last = page.chunks(ENTRY).filter(|e| valid(e)).last().map(|e| e.to_vec());
    let got = load(&mut dfu).expect("reading the simulated flash");
    assert_eq!(got.is_some(), last.is_some());
    if let (Some(r), Some(e)) = (got, last) {
        assert_eq!((&r.key[..], r.written.to_le_bytes()), (&e[4..20], e[20..24].try_into().unwrap()));
    }
    // Entries are appended in order: a valid one after an erased one is a page no save wrote.
    let first_free = page.chunks(ENTRY).position(|e| e.iter().all(|&b| b == 0xFF));
    let reachable = first_free.is_none_or(|f| !page.chunks(ENTRY).skip(f).any(valid));
    if reachable {
        let mut key = [0u8; 16];
        let k = bytes.len().min(16);
        key[..k].copy_from_slice(&bytes[..k]);
        let r = Resume { key, written: u32::from(ctl) * 4096 };
        save(&mut dfu, r).expect("saving on the simulated flash");
        assert_eq!(load(&mut dfu).unwrap(), Some(r), "load after save is not what was saved");
        assert!(dfu.bytes()[..2 * PAGE].iter().all(|&b| b == 0xFF), "save touched the image pages");
    }
});
