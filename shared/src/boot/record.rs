//! BOOT_RECORD: the bootloader's own small persistent record.
//!
//! Two copies, one per half of the region, written alternately so the previous one stays valid
//! until the new one is complete. Each copy:
//!
//! ```text
//! 0        2                 2+L            6+L
//! +--------+-----------------+--------------+----------------------+
//! | L u16  | postcard(record)| CRC-32 u32   | erased padding       |
//! +--------+-----------------+--------------+----------------------+
//! ```
//! The CRC (CRC-32/ISO-HDLC, little-endian) covers the length and the payload. The valid copy with
//! the higher `seq` wins; a torn write or a torn erase fails its CRC and the other copy stands.

use crate::image::ImageError;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use serde::{Deserialize, Serialize};

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
/// Bytes a copy can take, padding included.
pub const MAX_ENCODED: usize = 128;

/// Where an update stands. Every phase names the number of pages the swap moves, so a resumed
/// swap and a later revert use the same partition views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// No update under way.
    #[default]
    Idle,
    /// The DFU image verified and is being swapped in.
    Swapping {
        /// pages swapped
        pages: u32,
    },
    /// The new image is in ACTIVE and has not confirmed yet.
    Testing {
        /// pages swapped
        pages: u32,
    },
    /// The new image did not confirm; the old one is being swapped back.
    Reverting {
        /// pages swapped
        pages: u32,
    },
}

/// What the last update-related boot did, for the app to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LastBoot {
    /// No update happened.
    #[default]
    Nothing,
    /// A new image was swapped in and is being tested.
    SwappedIn,
    /// The new image confirmed itself; the counter was raised.
    Confirmed,
    /// The new image did not confirm and the old one was swapped back.
    Reverted,
    /// The DFU image was refused before any page moved; the old image stays.
    Refused(#[serde(with = "image_error")] ImageError),
}

/// The record itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BootRecord {
    /// Incremented on every write.
    pub seq: u32,
    /// The security counter: images with a lower SEC_CNT are refused.
    pub sec_cnt: u32,
    /// The update under way.
    pub phase: Phase,
    /// What the last update-related boot did.
    pub last: LastBoot,
}

impl BootRecord {
    /// Encodes one copy into `buf`; returns its length rounded up to `write_size`.
    pub fn encode(&self, buf: &mut [u8; MAX_ENCODED], write_size: usize, erased: u8) -> usize {
        buf.fill(erased);
        let payload = postcard::to_slice(self, &mut buf[2..MAX_ENCODED - 4]).expect("record fits").len();
        buf[..2].copy_from_slice(&(payload as u16).to_le_bytes());
        let crc = CRC.checksum(&buf[..2 + payload]);
        buf[2 + payload..6 + payload].copy_from_slice(&crc.to_le_bytes());
        (6 + payload).div_ceil(write_size) * write_size
    }

    /// Decodes one copy; `None` if it is erased, torn or otherwise invalid.
    pub fn decode(copy: &[u8]) -> Option<BootRecord> {
        let len = u16::from_le_bytes([*copy.first()?, *copy.get(1)?]) as usize;
        let body = copy.get(..2 + len)?;
        let crc = u32::from_le_bytes(copy.get(2 + len..6 + len)?.try_into().ok()?);
        if CRC.checksum(body) != crc {
            return None;
        }
        postcard::from_bytes(&body[2..]).ok()
    }

    /// Picks the newer of the two copies.
    fn newest(a: Option<BootRecord>, b: Option<BootRecord>) -> Option<(usize, BootRecord)> {
        match (a, b) {
            (Some(a), Some(b)) if b.seq > a.seq => Some((1, b)),
            (Some(a), _) => Some((0, a)),
            (None, Some(b)) => Some((1, b)),
            (None, None) => None,
        }
    }

    /// Reads both halves of `region` and returns the newest valid record and the half it is in.
    pub fn load<F: ReadNorFlash>(region: &mut F) -> Result<Option<(usize, BootRecord)>, NorFlashErrorKind> {
        let half = region.capacity() / 2;
        let mut copies = [None, None];
        for (i, c) in copies.iter_mut().enumerate() {
            let mut buf = [0u8; MAX_ENCODED];
            region.read((i * half) as u32, &mut buf).map_err(|e| e.kind())?;
            *c = BootRecord::decode(&buf);
        }
        Ok(Self::newest(copies[0], copies[1]))
    }

    /// Writes `self` (its `seq` replaced by the next one) into the half that does not hold the
    /// current record: erase that half, then one write.
    pub fn store<F: NorFlash>(&mut self, region: &mut F, erased: u8) -> Result<(), NorFlashErrorKind> {
        let current = Self::load(region)?;
        let (target, seq) = match current {
            Some((half, rec)) => (1 - half, rec.seq.wrapping_add(1)),
            None => (0, 1),
        };
        self.seq = seq;
        let half = (region.capacity() / 2) as u32;
        let mut buf = [0u8; MAX_ENCODED];
        let n = self.encode(&mut buf, F::WRITE_SIZE, erased);
        let at = target as u32 * half;
        region.erase(at, at + half).map_err(|e| e.kind())?;
        region.write(at, &buf[..n]).map_err(|e| e.kind())?;
        Ok(())
    }
}

/// serde for [`ImageError`] (its flash variant carries a foreign enum).
mod image_error {
    use super::ImageError;
    use embedded_storage::nor_flash::NorFlashErrorKind;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        BadMagic,
        BadHeader,
        UnsupportedFlags(u32),
        Truncated,
        TooLargeForSlot(u32, u32),
        BadTlv,
        MissingHash,
        HashMismatch,
        Unsigned,
        UnknownKey,
        BadSignature,
        CounterTooLow(u32, u32),
        Flash,
    }

    pub fn serialize<S: Serializer>(e: &ImageError, s: S) -> Result<S::Ok, S::Error> {
        let w = match *e {
            ImageError::BadMagic => Wire::BadMagic,
            ImageError::BadHeader => Wire::BadHeader,
            ImageError::UnsupportedFlags(f) => Wire::UnsupportedFlags(f),
            ImageError::Truncated => Wire::Truncated,
            ImageError::TooLargeForSlot { need, slot } => Wire::TooLargeForSlot(need, slot),
            ImageError::BadTlv => Wire::BadTlv,
            ImageError::MissingHash => Wire::MissingHash,
            ImageError::HashMismatch => Wire::HashMismatch,
            ImageError::Unsigned => Wire::Unsigned,
            ImageError::UnknownKey => Wire::UnknownKey,
            ImageError::BadSignature => Wire::BadSignature,
            ImageError::CounterTooLow { image, stored } => Wire::CounterTooLow(image, stored),
            ImageError::Flash(_) => Wire::Flash,
        };
        w.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ImageError, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::BadMagic => ImageError::BadMagic,
            Wire::BadHeader => ImageError::BadHeader,
            Wire::UnsupportedFlags(f) => ImageError::UnsupportedFlags(f),
            Wire::Truncated => ImageError::Truncated,
            Wire::TooLargeForSlot(need, slot) => ImageError::TooLargeForSlot { need, slot },
            Wire::BadTlv => ImageError::BadTlv,
            Wire::MissingHash => ImageError::MissingHash,
            Wire::HashMismatch => ImageError::HashMismatch,
            Wire::Unsigned => ImageError::Unsigned,
            Wire::UnknownKey => ImageError::UnknownKey,
            Wire::BadSignature => ImageError::BadSignature,
            Wire::CounterTooLow(image, stored) => ImageError::CounterTooLow { image, stored },
            Wire::Flash => ImageError::Flash(NorFlashErrorKind::Other),
        })
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{CutMode, FaultyFlash, SimFlash};

    fn rec(sec_cnt: u32, last: LastBoot) -> BootRecord {
        BootRecord { seq: 0, sec_cnt, phase: Phase::Testing { pages: 3 }, last }
    }

    #[test]
    fn a_record_round_trips_through_its_encoding() {
        let r = BootRecord { seq: 7, ..rec(2, LastBoot::Refused(ImageError::CounterTooLow { image: 1, stored: 2 })) };
        let mut buf = [0; MAX_ENCODED];
        let n = r.encode(&mut buf, 16, 0xFF);
        assert_eq!(n % 16, 0);
        assert_eq!(BootRecord::decode(&buf), Some(r));
        buf[3] ^= 1;
        assert_eq!(BootRecord::decode(&buf), None);
        assert_eq!(BootRecord::decode(&[0xFF; MAX_ENCODED]), None);
    }

    #[test]
    fn stores_alternate_halves_and_the_newest_wins() {
        let mut f = SimFlash::<4096, 4>::new(8192, 0xFF);
        assert_eq!(BootRecord::load(&mut f).unwrap(), None);
        rec(1, LastBoot::SwappedIn).store(&mut f, 0xFF).unwrap();
        rec(2, LastBoot::Confirmed).store(&mut f, 0xFF).unwrap();
        rec(3, LastBoot::Reverted).store(&mut f, 0xFF).unwrap();
        let (half, r) = BootRecord::load(&mut f).unwrap().unwrap();
        assert_eq!((half, r.seq, r.sec_cnt, r.last), (0, 3, 3, LastBoot::Reverted));
    }

    #[test]
    fn a_cut_store_leaves_the_previous_record() {
        for mode in CutMode::ALL {
            for op in 0..2 {
                for seed in 0..20 {
                    let mut f = FaultyFlash::new(SimFlash::<4096, 4>::new(8192, 0xFF).with_ecc(true), seed);
                    rec(1, LastBoot::SwappedIn).store(&mut f, 0xFF).unwrap();
                    f.cut_at(op, mode);
                    assert!(rec(9, LastBoot::Confirmed).store(&mut f, 0xFF).is_err());
                    f.power_cycle();
                    let (_, r) = BootRecord::load(&mut f).unwrap().unwrap();
                    let done = mode == CutMode::After && op == 1;
                    assert_eq!(r.sec_cnt, if done { 9 } else { 1 }, "{mode:?} at op {op}, seed {seed}");
                    // And the next store works from whatever the cut left.
                    rec(5, LastBoot::Nothing).store(&mut f, 0xFF).unwrap();
                    assert_eq!(BootRecord::load(&mut f).unwrap().unwrap().1.sec_cnt, 5);
                }
            }
        }
    }
}
