//! Building and signing images on the host (xtask, tests).

use super::{
    Header, HeaderRepr, ImageVersion, PublicKey, TlvAreaWriter, TlvKind, HEADER_LEN, MAX_ALIYUN_STR, TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// What goes into an image besides the body.
#[derive(Clone, Debug)]
pub struct SignParams<'a> {
    /// Bytes before the body (MCUboot `--header-size`), at least 32; 0x200 on our boards.
    pub header_size: u16,
    /// MCUboot header version.
    pub version: ImageVersion,
    /// Security counter (SEC_CNT TLV).
    pub sec_cnt: u32,
    /// Aliyun module name; `None` leaves the TLV out.
    pub module: Option<&'a str>,
    /// Aliyun version string; `None` leaves the TLV out.
    pub aliyun_version: Option<&'a str>,
    /// Trusted key slots this image revokes once confirmed (REVOKE_KEYS TLV); 0 leaves it out.
    pub revoke_keys: u32,
}

/// Signs `body` into a complete image: header, 0xFF padding, body, protected TLVs (SEC_CNT, module,
/// version), then SHA256, KEYHASH and ED25519 over the digest, exactly as `imgtool sign` lays them
/// out. Panics on parameters the caller must have checked (header size, string lengths).
pub fn sign_image(body: &[u8], p: &SignParams<'_>, key: &SigningKey) -> Vec<u8> {
    assert!(p.header_size as usize >= HEADER_LEN, "header size below 32 bytes");
    for s in [p.module, p.aliyun_version].into_iter().flatten() {
        assert!(!s.is_empty() && s.len() <= MAX_ALIYUN_STR, "Aliyun string must be 1..=64 bytes");
    }
    let mut prot = [0u8; 256];
    let mut w = TlvAreaWriter::new(&mut prot, TLV_PROT_INFO_MAGIC);
    w.push(TlvKind::SecCnt, &p.sec_cnt.to_le_bytes());
    if let Some(m) = p.module {
        w.push(TlvKind::AliyunModule, m.as_bytes());
    }
    if let Some(v) = p.aliyun_version {
        w.push(TlvKind::AliyunVersion, v.as_bytes());
    }
    if p.revoke_keys != 0 {
        w.push(TlvKind::RevokeKeys, &p.revoke_keys.to_le_bytes());
    }
    let prot_len = w.finish();

    let repr = HeaderRepr {
        load_addr: 0,
        hdr_size: p.header_size,
        protect_tlv_size: prot_len as u16,
        img_size: u32::try_from(body.len()).expect("body larger than 4 GiB"),
        flags: 0,
        version: p.version,
    };
    // Padding after the 32 header bytes is 0xFF, as imgtool writes it: same inputs, same bytes.
    let mut image = vec![0xFFu8; p.header_size as usize];
    repr.emit(&mut Header::new_unchecked(&mut image[..HEADER_LEN]));
    image.extend_from_slice(body);
    image.extend_from_slice(&prot[..prot_len]);

    let digest: [u8; 32] = Sha256::digest(&image).into();
    let signature = key.sign(&digest).to_bytes();
    let mut tlv = [0u8; 4 + 36 + 36 + 68];
    let mut w = TlvAreaWriter::new(&mut tlv, TLV_INFO_MAGIC);
    w.push(TlvKind::Sha256, &digest)
        .push(TlvKind::KeyHash, &PublicKey(key.verifying_key().to_bytes()).key_hash())
        .push(TlvKind::Ed25519, &signature);
    let tlv_len = w.finish();
    image.extend_from_slice(&tlv[..tlv_len]);
    image
}
