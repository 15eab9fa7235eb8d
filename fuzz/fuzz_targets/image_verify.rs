//! The image header, its TLV areas and `shared::image::verify` over a flash holding the input:
//! never panics, the same verdict through any buffer size, and `ImageInfo` only for an image that
//! is what it claims (its digest is the SHA-256 of the bytes hashed, signed by the trusted key).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use shared::image::{
    extent, verify, Header, HeaderRepr, ImageError, PublicKey, SliceFlash, TlvIter, VerifyOptions, TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
};

/// The public half of shared/src/testdata/imgtool-ed25519.pem (the seed image's key).
const KEY: [u8; 32] = [
    0x0f, 0xca, 0x3c, 0xbd, 0x3e, 0xe5, 0xb5, 0x95, 0xfc, 0x4c, 0x05, 0x66, 0x41, 0xba, 0xa8, 0x7a, 0x28, 0x1b, 0x11,
    0x45, 0x85, 0xa6, 0xc0, 0x16, 0x9c, 0x7d, 0xc0, 0x3f, 0x2a, 0x31, 0x52, 0x6c,
];

fuzz_target!(|data: &[u8]| {
    // The zero-copy views (the OTA machine reads the first block and the protected TLVs so).
    if let Ok(h) = Header::new_checked(data).and_then(|h| HeaderRepr::parse(&h)) {
        let _ = (h.body_end(), h.tlv_offset());
        for (off, magic) in [(h.body_end(), TLV_PROT_INFO_MAGIC), (h.tlv_offset(), TLV_INFO_MAGIC)] {
            if let Some(area) = off.and_then(|o| data.get(o as usize..)) {
                if let Ok((it, _)) = TlvIter::new(area, magic) {
                    for t in it.take(64) {
                        let _ = t.map(|t| (t.kind, t.value.len()));
                    }
                }
            }
        }
    }
    let _ = extent(&mut SliceFlash(data));
    let keys = [PublicKey(KEY)];
    let opts = VerifyOptions { keys: &keys, revoked: 0, min_sec_cnt: 0, slot_size: Some(0x1_0000) };
    let big = verify(&mut SliceFlash(data), &opts, &mut [0u8; 1024]);
    let small = verify(&mut SliceFlash(data), &opts, &mut [0u8; 7]);
    assert_eq!(big, small, "the verdict depends on the buffer size");
    if let Ok(info) = big {
        assert!(info.total_len as usize <= data.len() && info.total_len <= 0x1_0000);
        assert_eq!(info.key_hash, keys[0].key_hash());
        let h = HeaderRepr::parse(&Header::new_checked(data).unwrap()).unwrap();
        let hashed = h.tlv_offset().unwrap() as usize;
        assert_eq!(info.digest, <[u8; 32]>::from(Sha256::digest(&data[..hashed])), "ImageInfo for unhashed bytes");
        // Signed by slot 0: it can revoke nothing, and once slot 0 is revoked it verifies no more.
        assert_eq!((info.key_slot, info.revokes), (0, 0));
        let revoked = VerifyOptions { revoked: 1, ..opts };
        assert_eq!(verify(&mut SliceFlash(data), &revoked, &mut [0u8; 1024]), Err(ImageError::KeyRevoked { key: 0 }));
    }
});
