//! The provisioning page: a device's Aliyun credentials and how it reaches the broker, written
//! once per device by `cargo xtask provision` into the PROVISION region, never compiled into an
//! image (one image serves the whole fleet).
//!
//! ```text
//! 0   "ALIYUN-OTA-PROV" 0x01     magic and format version (16 bytes)
//! 16  u16 LE                     payload length
//! 18  0xFF 0xFF                  reserved
//! 20  u32 LE                     CRC-32 (ISO-HDLC) of the payload
//! 24  payload                    postcard of [`Provision`]
//! ```
//! The rest of the page stays erased. An erased page reads as [`ProvisionError::Empty`].

use serde::{Deserialize, Serialize};

/// Magic and format version.
pub const MAGIC: &[u8; 16] = b"ALIYUN-OTA-PROV\x01";
/// Bytes before the payload.
pub const HEADER: usize = 24;
/// Largest payload accepted (a provisioning page is at least 4 KiB; this bounds RAM).
pub const MAX_PAYLOAD: usize = 488;

const CRC32: crc::Crc<u32, crc::Table<1>> = crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);

/// What a device is told once, at provisioning.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provision<'a> {
    /// Aliyun product key.
    pub product_key: &'a str,
    /// Aliyun device name.
    pub device_name: &'a str,
    /// Aliyun device secret.
    pub device_secret: &'a str,
    /// `hmacsha256`, `hmacsha1` or `hmacmd5`.
    pub sign_method: &'a str,
    /// MQTT host, e.g. `{instance}.mqtt.iothub.aliyuncs.com`.
    pub host: &'a str,
    /// MQTT port (1883 plain, 8883 TLS).
    pub port: u16,
    /// TLS to the broker (done by the modem: AT+QSSLOPEN).
    pub tls: bool,
    /// The cellular APN.
    pub apn: &'a str,
}

/// Why a page does not hold a provisioning record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionError {
    /// The page is erased: the device was never provisioned.
    Empty,
    /// The page holds something else (or another format version).
    BadMagic,
    /// The length field is larger than the page or [`MAX_PAYLOAD`].
    BadLength,
    /// The payload's CRC does not match (a torn or corrupted write).
    BadCrc,
    /// The payload does not decode.
    Malformed,
    /// A field is empty or too long.
    BadField(&'static str),
}

impl core::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::Empty => f.write_str("not provisioned (the page is erased): run `cargo xtask provision`"),
            ProvisionError::BadMagic => f.write_str("the provisioning page holds something else: provision again"),
            ProvisionError::BadLength => f.write_str("provisioning record: bad length"),
            ProvisionError::BadCrc => f.write_str("provisioning record: CRC mismatch (torn write?): provision again"),
            ProvisionError::Malformed => f.write_str("provisioning record does not decode"),
            ProvisionError::BadField(n) => write!(f, "provisioning record: {n} is empty or too long"),
        }
    }
}

impl Provision<'_> {
    fn check(&self) -> Result<(), ProvisionError> {
        let fields = [
            ("product_key", self.product_key, 64),
            ("device_name", self.device_name, 64),
            ("device_secret", self.device_secret, 64),
            ("sign_method", self.sign_method, 16),
            ("host", self.host, 128),
            ("apn", self.apn, 62),
        ];
        for (name, v, max) in fields {
            if v.is_empty() || v.len() > max {
                return Err(ProvisionError::BadField(name));
            }
        }
        Ok(())
    }

    /// Writes the record (header + payload) into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProvisionError> {
        self.check()?;
        if out.len() < HEADER {
            return Err(ProvisionError::BadLength);
        }
        let (head, body) = out.split_at_mut(HEADER);
        let room = body.len().min(MAX_PAYLOAD);
        let n = postcard::to_slice(self, &mut body[..room]).map_err(|_| ProvisionError::BadLength)?.len();
        head[..16].copy_from_slice(MAGIC);
        head[16..18].copy_from_slice(&(n as u16).to_le_bytes());
        head[18..20].fill(0xFF);
        head[20..24].copy_from_slice(&CRC32.checksum(&body[..n]).to_le_bytes());
        Ok(HEADER + n)
    }
}

/// Reads the record at the start of `page` (borrowing its strings from `page`).
pub fn decode(page: &[u8]) -> Result<Provision<'_>, ProvisionError> {
    let head = page.get(..HEADER).ok_or(ProvisionError::BadLength)?;
    if head.iter().all(|&b| b == 0xFF) {
        return Err(ProvisionError::Empty);
    }
    if &head[..16] != MAGIC {
        return Err(ProvisionError::BadMagic);
    }
    let n = u16::from_le_bytes([head[16], head[17]]) as usize;
    let body = page.get(HEADER..HEADER + n).filter(|_| n <= MAX_PAYLOAD).ok_or(ProvisionError::BadLength)?;
    if CRC32.checksum(body).to_le_bytes() != head[20..24] {
        return Err(ProvisionError::BadCrc);
    }
    let p: Provision<'_> = postcard::from_bytes(body).map_err(|_| ProvisionError::Malformed)?;
    p.check()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Provision<'static> = Provision {
        product_key: "a1DemoPk001",
        device_name: "qemu-01",
        device_secret: "demo-secret-0123456789abcdef",
        sign_method: "hmacsha256",
        host: "127.0.0.1",
        port: 1883,
        tls: false,
        apn: "CMNET",
    };

    fn page() -> Vec<u8> {
        let mut page = vec![0xFF; 4096];
        let n = P.encode(&mut page).unwrap();
        assert!(n > HEADER && page[n..].iter().all(|&b| b == 0xFF));
        page
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&page()), Ok(P));
    }

    #[test]
    fn an_erased_page_says_not_provisioned() {
        assert_eq!(decode(&[0xFF; 4096]), Err(ProvisionError::Empty));
        assert!(decode(&[0xFF; 4096]).unwrap_err().to_string().contains("cargo xtask provision"));
    }

    #[test]
    fn every_flipped_bit_and_every_torn_write_is_refused() {
        let good = page();
        let n = HEADER + u16::from_le_bytes([good[16], good[17]]) as usize;
        for i in 0..n {
            for bit in 0..8 {
                let mut p = good.clone();
                p[i] ^= 1 << bit;
                if i == 18 || i == 19 {
                    continue; // reserved
                }
                assert!(decode(&p).is_err(), "byte {i} bit {bit} flipped still decodes");
            }
            // A write cut after `i` bytes: the rest still erased.
            let mut torn = vec![0xFF; 4096];
            torn[..i].copy_from_slice(&good[..i]);
            assert!(decode(&torn).is_err(), "a record torn at {i} decodes");
        }
    }

    #[test]
    fn empty_or_oversized_fields_are_refused() {
        let mut page = [0xFF; 1024];
        let long = "x".repeat(200);
        assert_eq!(Provision { host: &long, ..P }.encode(&mut page), Err(ProvisionError::BadField("host")));
        assert_eq!(
            Provision { device_secret: "", ..P }.encode(&mut page),
            Err(ProvisionError::BadField("device_secret"))
        );
    }
}
