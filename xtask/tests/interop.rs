//! Interop with tools nobody here wrote: imgtool (PyPI) and openssl.

mod common;
use common::*;
use std::path::Path;

fn imgtool_verify(key: &Path, image: &Path) -> bool {
    let o = run(imgtool(), &["verify", "-k", s(key), s(image)]);
    let out = text(&o.stdout);
    o.status.success() && out.contains("Image was correctly validated")
}

fn our_verify(key: &Path, image: &Path) -> bool {
    xtask(&["verify", s(image), "--key", s(key)]).status.success()
}

fn our_key(dir: &Path) -> std::path::PathBuf {
    let k = dir.join("ours.pem");
    xtask_ok(&["keygen", "--out", s(&k)]);
    k
}

fn imgtool_key(dir: &Path) -> std::path::PathBuf {
    let k = dir.join("imgtool.pem");
    let o = run(imgtool(), &["keygen", "-t", "ed25519", "-k", s(&k)]);
    assert!(o.status.success(), "imgtool keygen: {}", text(&o.stderr));
    k
}

#[test]
fn our_keygen_key_is_read_by_openssl_and_imgtool() {
    let d = scratch("keygen_interop");
    let k = our_key(&d);
    let o = run(openssl(), &["pkey", "-in", s(&k), "-noout"]);
    assert!(o.status.success(), "openssl pkey refused our key: {}", text(&o.stderr));
    // The public key openssl derives is the one keygen printed.
    let o = run(openssl(), &["pkey", "-in", s(&k), "-pubout", "-outform", "DER"]);
    let der = o.stdout;
    let o = run(imgtool(), &["getpub", "-k", s(&k)]);
    assert!(o.status.success(), "imgtool getpub refused our key: {}", text(&o.stderr));
    let hex_bytes: Vec<u8> =
        text(&o.stdout).split("0x").skip(1).filter_map(|h| u8::from_str_radix(&h[..2], 16).ok()).collect();
    assert_eq!(hex_bytes, der, "imgtool and openssl disagree on our key's public half");
}

#[test]
fn keygen_prints_the_public_key_openssl_derives() {
    let d = scratch("keygen_prints");
    let k = d.join("k.pem");
    let out = xtask_ok(&["keygen", "--out", s(&k)]);
    let o = run(openssl(), &["pkey", "-in", s(&k), "-pubout", "-outform", "DER"]);
    let public = hex::encode(&o.stdout[o.stdout.len() - 32..]);
    assert!(out.contains(&format!("public key: {public}")), "{out}");
}

#[test]
fn keygen_never_overwrites_without_force() {
    let d = scratch("keygen_force");
    let k = our_key(&d);
    let before = std::fs::read(&k).unwrap();
    let err = xtask_err(&["keygen", "--out", s(&k)]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&k).unwrap(), before);
    xtask_ok(&["keygen", "--out", s(&k), "--force"]);
    assert_ne!(std::fs::read(&k).unwrap(), before);
}

#[test]
fn every_image_we_sign_passes_imgtool_verify() {
    let d = scratch("ours_pass_imgtool");
    let k = our_key(&d);
    for (i, len) in [1usize, 1000, 4096, 65_539].into_iter().enumerate() {
        let body = d.join(format!("body{i}.bin"));
        std::fs::write(&body, bytes(len, i as u32)).unwrap();
        let img = d.join(format!("img{i}.bin"));
        let sec = (i * 3).to_string();
        xtask_ok(&[
            "sign",
            s(&body),
            s(&img),
            "--key",
            s(&k),
            "--version",
            "2.1.3+9",
            "--sec-cnt",
            &sec,
            "--module",
            "MCU",
            "--aliyun-version",
            "V2.1.3",
        ]);
        assert!(imgtool_verify(&k, &img), "imgtool refused our image of {len} bytes");
        assert!(our_verify(&k, &img));
        let dump = text(&run(imgtool(), &["dumpinfo", s(&img)]).stdout);
        assert!(dump.contains("version:            2.1.3+9"), "{dump}");
        assert!(dump.contains("type: SEC_CNT (0x50)"), "{dump}");
    }
}

#[test]
fn image_signed_by_imgtool_passes_our_verify() {
    let d = scratch("imgtool_pass_ours");
    let k = imgtool_key(&d);
    let body = d.join("body.bin");
    std::fs::write(&body, bytes(12_345, 7)).unwrap();
    let img = d.join("img.bin");
    let o = run(
        imgtool(),
        &[
            "sign",
            "--key",
            s(&k),
            "--header-size",
            "0x200",
            "--pad-header",
            "--version",
            "1.2.3",
            "-S",
            "0x20000",
            s(&body),
            s(&img),
        ],
    );
    assert!(o.status.success(), "imgtool sign: {}", text(&o.stderr));
    let out = xtask_ok(&["verify", s(&img), "--key", s(&k)]);
    assert!(out.contains("OK:"), "{out}");
    assert!(out.contains("version 1.2.3+0"), "{out}");
    // And a key that did not sign it is named as unknown.
    let other = our_key(&d);
    let err = xtask_err(&["verify", s(&img), "--key", s(&other)]);
    assert!(err.contains("unknown key"), "{err}");
}

#[test]
fn key_from_imgtool_signs_with_our_sign() {
    let d = scratch("imgtool_key_our_sign");
    let k = imgtool_key(&d);
    let body = d.join("body.bin");
    std::fs::write(&body, bytes(3000, 3)).unwrap();
    let img = d.join("img.bin");
    xtask_ok(&["sign", s(&body), s(&img), "--key", s(&k), "--version", "1.0"]);
    assert!(imgtool_verify(&k, &img));
    assert!(our_verify(&k, &img));
}

#[test]
fn one_flipped_byte_fails_both_tools() {
    let d = scratch("flipped");
    let k = our_key(&d);
    let body = d.join("body.bin");
    std::fs::write(&body, bytes(5000, 11)).unwrap();
    let img = d.join("img.bin");
    xtask_ok(&["sign", s(&body), s(&img), "--key", s(&k), "--version", "1.4", "--sec-cnt", "2"]);
    let good = std::fs::read(&img).unwrap();
    let hdr = 0x200;
    let prot = hdr + 5000;
    let n = good.len();
    for (what, at) in [
        ("header version", 21),
        ("header padding", 0x100),
        ("body start", hdr),
        ("body middle", hdr + 2500),
        ("body end", prot - 1),
        ("protected SEC_CNT value", prot + 8),
        ("protected version string", prot + 4 + 8 + 4 + 7 + 4),
        ("signature", n - 1),
        ("signature start", n - 64),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let f = d.join("bad.bin");
        std::fs::write(&f, &bad).unwrap();
        assert!(!imgtool_verify(&k, &f), "imgtool accepted a flipped {what} byte at {at:#x}");
        assert!(!our_verify(&k, &f), "we accepted a flipped {what} byte at {at:#x}");
    }
    std::fs::write(d.join("good.bin"), &good).unwrap();
    assert!(imgtool_verify(&k, &d.join("good.bin")) && our_verify(&k, &d.join("good.bin")));
}

#[test]
fn sign_refuses_an_image_larger_than_the_slot() {
    let d = scratch("too_large");
    let k = our_key(&d);
    let body = d.join("body.bin");
    std::fs::write(&body, bytes(0x77000, 1)).unwrap(); // nrf52840-dk ACTIVE is 0x77000
    let err = xtask_err(&[
        "sign",
        s(&body),
        s(&d.join("img.bin")),
        "--key",
        s(&k),
        "--version",
        "1.0",
        "--board",
        "nrf52840-dk",
    ]);
    assert!(err.contains("slot holds 487424"), "{err}");
    assert!(!d.join("img.bin").exists());
}

#[test]
fn sign_refuses_versions_aliyun_would_refuse() {
    let d = scratch("bad_version");
    let k = our_key(&d);
    let body = d.join("body.bin");
    std::fs::write(&body, [1, 2, 3]).unwrap();
    let long = "1".repeat(65);
    for v in ["1.0 beta", long.as_str(), "1.0/2"] {
        let err = xtask_err(&[
            "sign",
            s(&body),
            s(&d.join("i.bin")),
            "--key",
            s(&k),
            "--version",
            "1.0",
            "--aliyun-version",
            v,
        ]);
        assert!(err.contains("would be refused by Aliyun"), "{err}");
    }
}

#[test]
fn a_non_key_file_gets_a_message_that_says_how_to_make_one() {
    let d = scratch("not_a_key");
    let f = d.join("k.pem");
    std::fs::write(&f, "hello").unwrap();
    std::fs::write(d.join("b.bin"), [0u8; 4]).unwrap();
    let err = xtask_err(&["sign", s(&d.join("b.bin")), s(&d.join("i.bin")), "--key", s(&f), "--version", "1"]);
    assert!(err.contains("cargo xtask keygen"), "{err}");
}

/// The Aliyun IoT root CA the host device trusts (app/certs) is the one its README names, as
/// openssl reads it. (Every host device test also parses it: the device loads it at start.)
#[test]
fn the_built_in_aliyun_iot_root_ca_is_the_documented_one() {
    let pem = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/certs/aliyun-iot-root-ca.pem");
    let o = run(openssl(), &["x509", "-in", s(&pem), "-noout", "-subject", "-issuer", "-fingerprint", "-sha256"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("O = Aliyun IoT") && out.contains("CN = Aliyun IoT Root CA"), "{out}");
    let fp = "7C:A4:38:A3:97:6B:52:42:D2:31:F8:61:49:98:22:DA:85:58:31:38:27:35:83:6B:36:1E:7E:97:15:66:16:76";
    assert!(out.contains(fp), "{out}");
    let readme = std::fs::read_to_string(pem.with_file_name("README.md")).unwrap();
    assert!(readme.contains(fp));
}
