//! BOOT_RECORD: the bootloader's own small persistent record.
//!
//! A log in two halves: each store writes the record into the next erased slot of the current
//! half, so the previous record stays valid until the new one is complete and most stores erase
//! nothing. When the half is full, the other half is erased and the log goes on there. Each slot
//! ([`MAX_ENCODED`] bytes):
//!
//! ```text
//! 0        2                 2+L            6+L
//! +--------+-----------------+--------------+----------------------+
//! | L u16  | postcard(record)| CRC-32 u32   | erased padding       |
//! +--------+-----------------+--------------+----------------------+
//! ```
//! The CRC (CRC-32/ISO-HDLC, little-endian) covers the length and the payload. The valid slot with
//! the highest `seq` wins; a torn write or a torn erase fails its CRC and is skipped (a torn slot is
//! never written again: on ECC flash it could not be).

use super::ERASED;
use crate::image::ImageError;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use serde::{Deserialize, Serialize};

// Bitwise, no table: 1 KiB less in the bootloader for 128 bytes checked per slot.
const CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
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
        /// Times the bootloader has started it (1 after the swap): at the board's
        /// `boot_attempts` it is reverted instead of started again.
        boots: u8,
    },
    /// The new image did not confirm; the old one is being swapped back.
    Reverting {
        /// pages swapped
        pages: u32,
    },
}

/// What this boot did, for the app to report (the next boot that changes nothing records
/// `Nothing`, so a revert or refusal is reported once, not on every power-on).
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
    /// Signing keys revoked, one bit per key slot (bit j: images signed by trusted key j are
    /// refused). Raised only by a confirmed image's REVOKE_KEYS TLV, never lowered.
    pub revoked: u32,
    /// The update under way.
    pub phase: Phase,
    /// What the last update-related boot did.
    pub last: LastBoot,
}

impl BootRecord {
    /// The counter and revocations it keeps.
    pub fn floor(&self) -> super::Floor {
        super::Floor { sec_cnt: self.sec_cnt, revoked: self.revoked }
    }

    /// Encodes one copy into `buf`; returns its length rounded up to `write_size`.
    pub fn encode(&self, buf: &mut [u8; MAX_ENCODED], write_size: usize) -> usize {
        buf.fill(ERASED);
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

    /// Reads every slot of both halves of `region` and returns the newest valid record with
    /// its position (half, slot).
    pub fn load<F: ReadNorFlash>(region: &mut F) -> Result<Option<(Slot, BootRecord)>, NorFlashErrorKind> {
        let mut best: Option<(Slot, BootRecord)> = None;
        let mut buf = [0u8; MAX_ENCODED];
        for at in Slot::all(region.capacity()) {
            region.read(at.offset(region.capacity()), &mut buf).map_err(|e| e.kind())?;
            if let Some(r) = BootRecord::decode(&buf) {
                if best.is_none_or(|(_, b)| r.seq > b.seq) {
                    best = Some((at, r));
                }
            }
        }
        Ok(best)
    }

    /// Writes `self` (its `seq` replaced by the next one) into the next erased slot after the
    /// current record; when its half has none left, erases the other half and starts there.
    pub fn store<F: NorFlash>(&mut self, region: &mut F) -> Result<(), NorFlashErrorKind> {
        let cap = region.capacity();
        let current = Self::load(region)?;
        self.seq = current.map_or(1, |(_, r)| r.seq.wrapping_add(1));
        let (half, after) = match current {
            Some((at, _)) => (at.half, Some(at.index)),
            None => (0, None),
        };
        let mut rec = [0u8; MAX_ENCODED];
        let n = self.encode(&mut rec, F::WRITE_SIZE);
        let mut buf = [0u8; MAX_ENCODED];
        for index in after.map_or(0, |i| i + 1)..Slot::per_half(cap) {
            let at = Slot { half, index };
            region.read(at.offset(cap), &mut buf).map_err(|e| e.kind())?;
            if buf.iter().all(|&b| b == ERASED) {
                // A slot can read erased yet refuse programming (a write cut so early that only
                // ECC bits moved): then the next one is tried.
                if region.write(at.offset(cap), &rec[..n]).is_ok() {
                    return Ok(());
                }
            }
        }
        // Fresh flash whose first half is not clean, or a full half: (re)start the other.
        let other = if current.is_some() { 1 - half } else { half };
        let h = (cap / 2) as u32;
        region.erase(other as u32 * h, (other as u32 + 1) * h).map_err(|e| e.kind())?;
        region.write(Slot { half: other, index: 0 }.offset(cap), &rec[..n]).map_err(|e| e.kind())
    }
}

/// A record's place in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// 0 or 1.
    pub half: usize,
    /// Slot within the half.
    pub index: usize,
}

impl Slot {
    fn per_half(capacity: usize) -> usize {
        capacity / 2 / MAX_ENCODED
    }
    fn all(capacity: usize) -> impl Iterator<Item = Slot> {
        (0..2).flat_map(move |half| (0..Self::per_half(capacity)).map(move |index| Slot { half, index }))
    }
    fn offset(&self, capacity: usize) -> u32 {
        (self.half * (capacity / 2) + self.index * MAX_ENCODED) as u32
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
        KeyRevoked(u8),
        BadRevocation(u8, u32),
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
            ImageError::KeyRevoked { key } => Wire::KeyRevoked(key),
            ImageError::BadRevocation { key, revokes } => Wire::BadRevocation(key, revokes),
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
            Wire::KeyRevoked(key) => ImageError::KeyRevoked { key },
            Wire::BadRevocation(key, revokes) => ImageError::BadRevocation { key, revokes },
        })
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{CutMode, FaultyFlash, SimFlash};

    fn rec(sec_cnt: u32, last: LastBoot) -> BootRecord {
        BootRecord { seq: 0, sec_cnt, revoked: 0b10, phase: Phase::Testing { pages: 3, boots: 2 }, last }
    }

    #[test]
    fn a_record_round_trips_through_its_encoding() {
        let r = BootRecord { seq: 7, ..rec(2, LastBoot::Refused(ImageError::CounterTooLow { image: 1, stored: 2 })) };
        let mut buf = [0; MAX_ENCODED];
        let n = r.encode(&mut buf, 16);
        assert_eq!(n % 16, 0);
        assert_eq!(BootRecord::decode(&buf), Some(r));
        buf[3] ^= 1;
        assert_eq!(BootRecord::decode(&buf), None);
        assert_eq!(BootRecord::decode(&[0xFF; MAX_ENCODED]), None);
    }

    #[test]
    fn stores_append_then_move_to_the_other_half_and_the_newest_wins() {
        let mut f = SimFlash::<4096, 4>::new(8192, 0xFF);
        assert_eq!(BootRecord::load(&mut f).unwrap(), None);
        let per_half = 4096 / MAX_ENCODED;
        for i in 0..(3 * per_half as u32 + 5) {
            rec(i, LastBoot::SwappedIn).store(&mut f).unwrap();
            let (_, r) = BootRecord::load(&mut f).unwrap().unwrap();
            assert_eq!((r.seq, r.sec_cnt), (i + 1, i));
        }
        // Three half switches: three erases for 101 stores.
        assert_eq!(f.wear().erases, 3);
    }

    #[test]
    fn a_cut_store_leaves_the_previous_record() {
        let mut cases = 0;
        for stored_before in [1, 31, 32, 33] {
            let mut base = FaultyFlash::new(SimFlash::<4096, 4>::new(8192, 0xFF).with_ecc(true), 0);
            for i in 0..stored_before {
                rec(i, LastBoot::SwappedIn).store(&mut base).unwrap();
            }
            let ops = {
                let mut clean = base.clone();
                let before = clean.ops();
                rec(99, LastBoot::Confirmed).store(&mut clean).unwrap();
                clean.ops() - before
            };
            for op in 0..ops {
                for mode in CutMode::ALL {
                    for seed in 0..10 {
                        let mut f = FaultyFlash::new(base.inner().clone(), seed);
                        f.cut_at(op, mode);
                        assert!(rec(99, LastBoot::Confirmed).store(&mut f).is_err());
                        f.power_cycle();
                        let (_, r) = BootRecord::load(&mut f).unwrap().unwrap();
                        let done = mode == CutMode::After && op == ops - 1;
                        let want = if done { 99 } else { stored_before - 1 };
                        // A torn last write whose unmoved bits were all meant to stay erased (CRC
                        // and padding ending in 0xFF) has written the whole record: it is valid.
                        let complete = mode == CutMode::Torn && op == ops - 1 && r.sec_cnt == 99;
                        if !complete {
                            assert_eq!(r.sec_cnt, want, "{stored_before} stored, {mode:?} at op {op}, seed {seed}");
                        }
                        // The next store works from whatever the cut left.
                        rec(5, LastBoot::Nothing).store(&mut f).unwrap();
                        assert_eq!(BootRecord::load(&mut f).unwrap().unwrap().1.sec_cnt, 5);
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100);
    }
}
