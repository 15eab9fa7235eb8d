//! `sign` and `verify`.

use crate::{build::read_binary, keys, parse_u32, BoardArg};
use anyhow::{bail, ensure, Context, Result};
use memory_layouts::Board;
use shared::image::{
    self, sign_image, Header, HeaderRepr, ImageVersion, PublicKey, SignParams, SliceFlash, TlvIter, TlvKind,
    VerifyOptions, HEADER_LEN, TLV_INFO_MAGIC, TLV_PROT_INFO_MAGIC,
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SignArgs {
    /// Raw binary (or ELF) to sign; it must be linked at ACTIVE + header size.
    input: PathBuf,
    /// Signed image to write.
    output: PathBuf,
    /// Ed25519 private key (PKCS#8 PEM, from `cargo xtask keygen` or `imgtool keygen -t ed25519`).
    #[arg(long, short)]
    key: PathBuf,
    /// Image version for the MCUboot header: MAJOR[.MINOR[.REVISION]][+BUILD], e.g. 1.4.0+7.
    #[arg(long, short)]
    version: String,
    /// The version string the device reports to Aliyun (default: --version as given).
    #[arg(long)]
    aliyun_version: Option<String>,
    /// Aliyun OTA module name.
    #[arg(long, default_value = "default")]
    module: String,
    /// Security counter: devices that ran an image with a higher one refuse this image.
    #[arg(long, default_value_t = 0)]
    sec_cnt: u32,
    /// Bytes before the body (default: the board's, or 0x200).
    #[arg(long, value_parser = parse_u32)]
    header_size: Option<u32>,
    /// Refuse an image larger than this (default: the board's ACTIVE slot).
    #[arg(long, value_parser = parse_u32)]
    slot_size: Option<u32>,
    /// Take header size and slot size from this board's layout.
    #[arg(long, value_enum)]
    board: Option<BoardArg>,
    #[command(flatten)]
    rotation: Rotation,
}

/// Key rotation: which keys devices trust, and which of them this image retires.
#[derive(clap::Args, Default)]
pub struct Rotation {
    /// The keys devices trust, in slot order (slot 0 first): the list their firmware was built
    /// with (`cargo xtask build --key K0 --key K1 ...`). Default: the signing key alone (slot 0).
    #[arg(long = "trust", value_name = "PEM")]
    pub trust: Vec<PathBuf>,
    /// Key slots this image revokes once a device confirms it (comma-separated, e.g. 0 or 0,1):
    /// from then on images signed by those keys are refused. Only slots below the signing key's.
    #[arg(long, value_delimiter = ',', value_name = "SLOTS")]
    pub revoke_keys: Vec<u8>,
}

impl Rotation {
    /// The trusted list (public keys, slot order), the signing key's slot and the revocation
    /// mask, checked: the signing key must be in the list, and may revoke only slots below its own.
    pub fn resolve(&self, signer: &PublicKey) -> Result<(Vec<PublicKey>, u8, u32)> {
        let trusted = if self.trust.is_empty() {
            vec![*signer]
        } else {
            self.trust.iter().map(|k| keys::load_public_key(k)).collect::<Result<Vec<_>>>()?
        };
        ensure!(
            trusted.len() <= shared::image::MAX_KEYS,
            "{} trusted keys: a device holds at most {}",
            trusted.len(),
            shared::image::MAX_KEYS
        );
        let Some(slot) = trusted.iter().position(|k| k == signer) else {
            bail!(
                "the signing key ({}) is not one of the --trust keys: devices would refuse the image.                  Pass the keys devices trust in slot order, the signing key among them.",
                hex::encode(signer.key_hash())
            );
        };
        let mut mask = 0u32;
        for &r in &self.revoke_keys {
            ensure!(
                (r as usize) < slot,
                "--revoke-keys {r}: this image is signed with the key in slot {slot}, so it can revoke only                  slots below {slot} (revoking its own or a later key would leave devices unable to update)"
            );
            mask |= 1 << r;
        }
        Ok((trusted, slot as u8, mask))
    }
}

/// The rule Aliyun applies to package versions (CreateOTAFirmware `DestVersion`), which we also
/// apply to module names: 1-64 characters of `[A-Za-z0-9._-]`.
pub fn check_aliyun_string(what: &str, s: &str) -> Result<()> {
    if !shared::alink::valid_version(s) {
        bail!("{what} {s:?} would be refused by Aliyun: use 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// Signs `body`, refusing anything the device would refuse, and checks the result with `verify`.
pub fn make_image(
    body: &[u8],
    p: &SignParams<'_>,
    key: &ed25519_dalek::SigningKey,
    trusted: &[PublicKey],
    slot: Option<u32>,
) -> Result<Vec<u8>> {
    for (what, s) in [("module", p.module), ("version", p.aliyun_version)] {
        check_aliyun_string(what, s.unwrap_or("default"))?;
    }
    if (p.header_size as usize) < HEADER_LEN {
        bail!("--header-size {:#x} is below the 32-byte header", p.header_size);
    }
    let img = sign_image(body, p, key);
    if let Some(slot) = slot {
        if img.len() as u64 > slot as u64 {
            bail!(
                "the signed image is {} bytes but the slot holds {slot} ({} too many): make the app smaller \
                 or give ACTIVE more room in memory-layouts",
                img.len(),
                img.len() as u64 - slot as u64
            );
        }
    }
    let opts = VerifyOptions { keys: trusted, revoked: 0, min_sec_cnt: 0, slot_size: slot };
    image::verify(&mut SliceFlash(&img), &opts, &mut [0; 512]).context("the image we just signed does not verify")?;
    Ok(img)
}

pub fn sign(a: SignArgs) -> Result<()> {
    let layout = a.board.map(|b| Board::from(b).layout());
    let version = ImageVersion::parse(&a.version)
        .with_context(|| format!("--version {:?} is not MAJOR[.MINOR[.REVISION]][+BUILD], e.g. 1.4.0+7", a.version))?;
    let header_size = a.header_size.or(layout.map(|l| l.image_header_size)).unwrap_or(0x200);
    let header_size = u16::try_from(header_size).context("--header-size above 0xffff")?;
    let slot = a.slot_size.or(layout.map(|l| l.active.length));
    let key = keys::load_signing_key(&a.key)?;
    let (trusted, _, revoke_keys) = a.rotation.resolve(&PublicKey(key.verifying_key().to_bytes()))?;
    let body = read_binary(&a.input)?;
    let aliyun_version = a.aliyun_version.as_deref().unwrap_or(&a.version);
    let p = SignParams {
        header_size,
        version,
        sec_cnt: a.sec_cnt,
        module: Some(&a.module),
        aliyun_version: Some(aliyun_version),
        revoke_keys,
    };
    let img = make_image(&body, &p, &key, &trusted, slot)?;
    std::fs::write(&a.output, &img).with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "signed {} -> {} ({} bytes, version {version}, Aliyun {}/{aliyun_version}, SEC_CNT {})",
        a.input.display(),
        a.output.display(),
        img.len(),
        a.module,
        a.sec_cnt
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image to check.
    image: PathBuf,
    /// Trusted key(s): private or public PEM. Repeat for several, in slot order (slot 0 first),
    /// as the firmware was built.
    #[arg(long, short, required = true)]
    key: Vec<PathBuf>,
    /// Key slots the device has revoked (comma-separated): images signed by them are refused.
    #[arg(long, value_delimiter = ',', value_name = "SLOTS")]
    revoked: Vec<u8>,
    /// The device's stored security counter.
    #[arg(long, default_value_t = 0)]
    min_sec_cnt: u32,
    /// The slot it must fit (default: the board's ACTIVE, or no limit).
    #[arg(long, value_parser = parse_u32)]
    slot_size: Option<u32>,
    /// Check against this board's ACTIVE slot.
    #[arg(long, value_enum)]
    board: Option<BoardArg>,
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let bytes = std::fs::read(&a.image).with_context(|| format!("reading {}", a.image.display()))?;
    let keys = a.key.iter().map(|k| keys::load_public_key(k)).collect::<Result<Vec<_>>>()?;
    print_image(&bytes);
    let slot = a.slot_size.or(a.board.map(|b| Board::from(b).layout().active.length));
    let revoked = a.revoked.iter().try_fold(0u32, |m, &s| {
        ensure!((s as usize) < keys.len(), "--revoked {s}: only {} keys given (slots 0..{})", keys.len(), keys.len());
        Ok(m | 1 << s)
    })?;
    let opts = VerifyOptions { keys: &keys, revoked, min_sec_cnt: a.min_sec_cnt, slot_size: slot };
    match image::verify(&mut SliceFlash(&bytes), &opts, &mut [0; 4096]) {
        Ok(info) => {
            println!(
                "OK: {} verifies (SHA-256 {}), signed by key slot {} (key hash {})",
                a.image.display(),
                hex::encode(info.digest),
                info.key_slot,
                hex::encode(info.key_hash)
            );
            match slots(info.revokes) {
                s if s.is_empty() => println!("revokes no keys"),
                s => println!("revokes key slot(s) {s} once a device confirms it"),
            }
            Ok(())
        }
        Err(e) => bail!("{} does not verify: {e}", a.image.display()),
    }
}

/// Prints what can be parsed of an image, even a broken one.
fn print_image(b: &[u8]) {
    let Ok(h) = Header::new_checked(b).and_then(|h| HeaderRepr::parse(&h)) else {
        println!("no MCUboot header");
        return;
    };
    println!(
        "header: version {}, hdr_size {:#x}, img_size {} bytes, protected TLVs {} bytes, flags {:#x}",
        h.version, h.hdr_size, h.img_size, h.protect_tlv_size, h.flags
    );
    let (Some(prot), Some(tlv)) = (h.body_end(), h.tlv_offset()) else { return };
    let areas = [(prot as usize, TLV_PROT_INFO_MAGIC, "protected"), (tlv as usize, TLV_INFO_MAGIC, "TLVs")];
    for (off, magic, name) in areas {
        if magic == TLV_PROT_INFO_MAGIC && h.protect_tlv_size == 0 {
            continue;
        }
        let Some(area) = b.get(off..) else { continue };
        match TlvIter::new(area, magic) {
            Ok((it, total)) => {
                println!("{name} at {off:#x} ({total} bytes):");
                for t in it {
                    match t {
                        Ok(t) => println!("  {:<14} {}", format!("{:?}", t.kind), show_value(t.kind, t.value)),
                        Err(e) => println!("  {e}"),
                    }
                }
            }
            Err(e) => println!("{name} at {off:#x}: {e}"),
        }
    }
}

fn show_value(kind: TlvKind, v: &[u8]) -> String {
    match kind {
        TlvKind::SecCnt if v.len() == 4 => u32::from_le_bytes(v.try_into().unwrap()).to_string(),
        TlvKind::RevokeKeys if v.len() == 4 => format!("slots {}", slots(u32::from_le_bytes(v.try_into().unwrap()))),
        TlvKind::AliyunModule | TlvKind::AliyunVersion => format!("{:?}", String::from_utf8_lossy(v)),
        _ => hex::encode(v),
    }
}

/// A key-slot mask as a list: "0, 2".
pub fn slots(mask: u32) -> String {
    (0..32).filter(|i| mask & (1 << i) != 0).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
