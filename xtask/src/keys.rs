//! Signing keys: Ed25519 in PKCS#8 PEM, the format of `openssl genpkey -algorithm ed25519` and
//! `imgtool keygen -t ed25519`.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use ed25519_dalek::pkcs8::{
    spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use shared::image::PublicKey;
use std::path::{Path, PathBuf};

/// The development key committed in `keys/`: anyone can sign with it. Fine for the demo and tests;
/// never for devices in the field.
pub fn dev_key() -> PathBuf {
    crate::root().join("keys/dev-ed25519.pem")
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file (its key is lost for good).
    #[arg(long)]
    force: bool,
    /// The keys devices already trust, in slot order: the new key's slot is the next one (give
    /// none for a first key: slot 0).
    #[arg(long = "after", value_name = "PEM")]
    after: Vec<PathBuf>,
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
    let before = a.after.iter().map(|p| load_public_key(p)).collect::<Result<Vec<_>>>()?;
    let slot = before.len();
    ensure!(slot < shared::image::MAX_KEYS, "devices trust at most {} keys", shared::image::MAX_KEYS);
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists; devices that trust it would no longer accept images signed with a new key. \
             Pick another --out, or pass --force to overwrite it.",
            a.out.display()
        );
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    // PKCS#8 v1 (no public key inside), the form openssl and imgtool write and read.
    let pem = KeypairBytes { secret_key: key.to_bytes(), public_key: None }
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the key")?;
    write_private(&a.out, pem.as_bytes())?;
    let public = PublicKey(key.verifying_key().to_bytes());
    println!("wrote {}", a.out.display());
    println!("public key: {}", hex::encode(public.0));
    println!("key hash:   {}", hex::encode(public.key_hash()));
    let list: Vec<String> = a.after.iter().chain([&a.out]).map(|p| format!("--key {}", p.display())).collect();
    println!("slot:       {slot} (the bootloader and the app trust keys in slot order)");
    println!(
        "  build firmware that trusts it, before any device ships (the bootloader is flashed once):\n    \
         cargo xtask build --board <board> {}",
        list.join(" ")
    );
    if slot > 0 {
        println!(
            "  retire keys below it with a release it signs: cargo xtask release ... --key {} {} --revoke-keys 0",
            a.out.display(),
            list.iter().map(|k| k.replace("--key", "--trust")).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_pem(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))
}

/// Loads a private key for signing.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let pem = read_pem(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM ({e}). Make one with \
             `cargo xtask keygen --out KEY.pem` or `imgtool keygen -t ed25519 -k KEY.pem`.",
            path.display()
        )
    })
}

/// Loads the public half of a private key, or a public key PEM (`openssl pkey -pubout`).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let pem = read_pem(path)?;
    if let Ok(k) = SigningKey::from_pkcs8_pem(&pem) {
        return Ok(PublicKey(k.verifying_key().to_bytes()));
    }
    match VerifyingKey::from_public_key_pem(&pem) {
        Ok(k) => Ok(PublicKey(k.to_bytes())),
        Err(e) => bail!(
            "{} is neither an Ed25519 private key (PKCS#8 PEM) nor an Ed25519 public key PEM ({e})",
            path.display()
        ),
    }
}

/// The public keys of `paths` in slot order, or the development key alone when none is given.
pub fn trusted_or_dev(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    if paths.is_empty() {
        return Ok(vec![load_public_key(&dev_key())?]);
    }
    ensure!(
        paths.len() <= shared::image::MAX_KEYS,
        "{} keys: a device trusts at most {}",
        paths.len(),
        shared::image::MAX_KEYS
    );
    paths.iter().map(|p| load_public_key(p)).collect()
}

/// The key given with `--key`, or the development key with a warning.
pub fn signing_key_or_dev(key: Option<&Path>) -> Result<(SigningKey, PathBuf)> {
    let path = match key {
        Some(k) => k.to_path_buf(),
        None => {
            eprintln!(
                "warning: no --key: signing with the public development key {}. Anyone can sign images \
                 that devices built this way accept; use your own key (`cargo xtask keygen`) for devices in the field.",
                dev_key().display()
            );
            dev_key()
        }
    };
    Ok((load_signing_key(&path)?, path))
}
