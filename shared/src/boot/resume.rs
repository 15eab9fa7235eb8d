//! Where an interrupted download stopped, kept in the spare page at the end of DFU.
//!
//! DFU is ACTIVE plus at least one page; a download never reaches that last page (an image fits
//! ACTIVE) and the swap only uses it after the download is marked, when the record is no longer
//! needed. Entries are appended (no erase per save); the page is erased when full or cleared:
//!
//! ```text
//! entry (32 bytes): magic "OTAP" | task key (16) | written u32 LE | crc32 LE | erased pad (4)
//! ```

use super::ERASED;
use crate::ota::Resume;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

const MAGIC: [u8; 4] = *b"OTAP";
const ENTRY: usize = 32;
const CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// The spare page of a DFU partition.
pub fn spare_page<D: NorFlash>(dfu: &D) -> u32 {
    (dfu.capacity() - D::ERASE_SIZE) as u32
}

fn decode(e: &[u8; ENTRY]) -> Option<Resume> {
    if e[..4] != MAGIC || CRC.checksum(&e[..24]).to_le_bytes() != e[24..28] {
        return None;
    }
    Some(Resume { key: e[4..20].try_into().ok()?, written: u32::from_le_bytes(e[20..24].try_into().ok()?) })
}

const CHUNK: usize = 16 * ENTRY;

/// Calls `f(index, entry)` for every entry of the spare page, reading it in chunks.
fn scan<D: NorFlash>(dfu: &mut D, mut f: impl FnMut(usize, &[u8; ENTRY]) -> bool) -> Result<(), NorFlashErrorKind> {
    let base = spare_page(dfu);
    let mut chunk = [0u8; CHUNK];
    for c in (0..D::ERASE_SIZE).step_by(CHUNK) {
        let n = CHUNK.min(D::ERASE_SIZE - c);
        dfu.read(base + c as u32, &mut chunk[..n]).map_err(|x| x.kind())?;
        for (i, e) in chunk[..n].chunks_exact(ENTRY).enumerate() {
            if !f(c / ENTRY + i, e.try_into().unwrap()) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The last valid resume point in DFU's spare page.
pub fn load<D: NorFlash>(dfu: &mut D) -> Result<Option<Resume>, NorFlashErrorKind> {
    let mut last = None;
    scan(dfu, |_, e| {
        if let Some(r) = decode(e) {
            last = Some(r);
        }
        true
    })?;
    Ok(last)
}

/// Appends `r`; erases the page first when it is full.
pub fn save<D: NorFlash>(dfu: &mut D, r: Resume) -> Result<(), NorFlashErrorKind> {
    let base = spare_page(dfu);
    let mut e = [ERASED; ENTRY];
    e[..4].copy_from_slice(&MAGIC);
    e[4..20].copy_from_slice(&r.key);
    e[20..24].copy_from_slice(&r.written.to_le_bytes());
    let crc = CRC.checksum(&e[..24]);
    e[24..28].copy_from_slice(&crc.to_le_bytes());
    let mut free = heapless::Vec::<usize, 4>::new();
    scan(dfu, |i, cur| {
        if cur.iter().all(|&b| b == ERASED) {
            let _ = free.push(i);
        }
        !free.is_full()
    })?;
    // A slot can read erased yet refuse programming (ECC after a cut write): try the next one.
    for i in free {
        if dfu.write(base + (i * ENTRY) as u32, &e).is_ok() {
            return Ok(());
        }
    }
    clear(dfu)?;
    dfu.write(base, &e).map_err(|x| x.kind())
}

/// Forgets any resume point.
pub fn clear<D: NorFlash>(dfu: &mut D) -> Result<(), NorFlashErrorKind> {
    let base = spare_page(dfu);
    dfu.erase(base, base + D::ERASE_SIZE as u32).map_err(|x| x.kind())
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::SimFlash;

    #[test]
    fn the_last_saved_point_wins_and_a_full_page_rolls_over() {
        let mut dfu = SimFlash::<4096, 16>::new(3 * 4096, 0xFF);
        assert_eq!(load(&mut dfu).unwrap(), None);
        for i in 0..300u32 {
            save(&mut dfu, Resume { key: [i as u8; 16], written: i * 4096 }).unwrap();
            assert_eq!(load(&mut dfu).unwrap(), Some(Resume { key: [i as u8; 16], written: i * 4096 }));
        }
        assert_eq!(dfu.wear().erases, 2, "one erase per 128 saves");
        clear(&mut dfu).unwrap();
        assert_eq!(load(&mut dfu).unwrap(), None);
        assert!(dfu.bytes()[..8192].iter().all(|&b| b == 0xFF), "the image pages are untouched");
    }
}
