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

/// Thumb-like bytes: halfwords with `BL`s between "functions"; `variant` 1 grows one of them and
/// changes a few instructions, so what follows moves.
fn thumb_blob(variant: u32) -> Vec<u8> {
    let mut x = 0x2545_F491u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut v = Vec::new();
    for f in 0..400u32 {
        let len = 20 + (f * 7919) % 90;
        let len = if variant == 1 && f == 40 { len + 30 } else { len };
        for i in 0..len {
            let r = next();
            if i % 9 == 4 {
                let off = (r % 40_000) as i32 - 20_000;
                let off = (off as u32) & 0x3f_ffff;
                v.extend_from_slice(&[
                    (off >> 11) as u8,
                    0xF0 | ((off >> 19) & 7) as u8,
                    off as u8,
                    0xF8 | ((off >> 8) & 7) as u8,
                ]);
            } else {
                let h = (r % 0xE000) as u16 ^ if variant == 1 && r % 250 == 0 { 0x11 } else { 0 };
                v.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    v
}

fn venv_python() -> std::path::PathBuf {
    detools().with_file_name("python3")
}

#[test]
fn patches_made_by_detools_create_patch_apply_on_our_device() {
    let d = scratch("detools_to_ours");
    let (old, new) = (thumb_blob(0), thumb_blob(1));
    let (a, b) = (d.join("old.bin"), d.join("new.bin"));
    std::fs::write(&a, &old).unwrap();
    std::fs::write(&b, &new).unwrap();
    let cases: [&[&str]; 5] = [
        &["--compression", "none"],
        &["--compression", "crle"],
        &["--compression", "heatshrink"],
        &["--compression", "heatshrink", "--heatshrink-window-sz2", "11", "--heatshrink-lookahead-sz2", "6"],
        &["--compression", "heatshrink", "--heatshrink-window-sz2", "9", "--heatshrink-lookahead-sz2", "8"],
    ];
    for args in cases {
        let p = d.join("detools.patch");
        let o = run(detools(), &[&["create_patch"][..], args, &[s(&a), s(&b), s(&p)]].concat());
        assert!(o.status.success(), "detools create_patch {args:?}: {}", text(&o.stderr));
        let patch = std::fs::read(&p).unwrap();
        let rebuilt = xtask::package::apply_delta(&patch, &old, 1 << 20).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(rebuilt == new, "{args:?}: our patcher rebuilt other bytes from detools' patch");
    }
    // What the device cannot decode is refused by name, not mis-applied.
    let p = d.join("lzma.patch");
    assert!(run(detools(), &["create_patch", "--compression", "lzma", s(&a), s(&b), s(&p)]).status.success());
    let e = xtask::package::apply_delta(&std::fs::read(&p).unwrap(), &old, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("compression 1 (lzma)"), "{e}");
}

#[test]
fn detools_apply_patch_rebuilds_our_patches_byte_exactly() {
    use shared::delta::{Base, Compression, CreateOptions, Filter, Header};
    let d = scratch("ours_to_detools");
    let (old, new) = (thumb_blob(0), thumb_blob(1));
    // The ARM-Thumb filter is liblzma's: Python's lzma gives the same bytes (the raw LZMA2 stream
    // of ARMTHUMB+LZMA2, decoded with LZMA2 alone, is the filter's output).
    let script = "import lzma, sys\n\
        d = open(sys.argv[1], 'rb').read()\n\
        c = lzma.compress(d, format=lzma.FORMAT_RAW, filters=[{'id': lzma.FILTER_ARMTHUMB}, {'id': lzma.FILTER_LZMA2}])\n\
        f = lzma.decompress(c, format=lzma.FORMAT_RAW, filters=[{'id': lzma.FILTER_LZMA2}])\n\
        open(sys.argv[2], 'wb').write(f)\n";
    let mut filtered = Vec::new();
    for (name, bytes) in [("old", &old), ("new", &new)] {
        let (raw, out) = (d.join(format!("{name}.bin")), d.join(format!("{name}.thumb")));
        std::fs::write(&raw, bytes).unwrap();
        let o = run(&venv_python(), &["-c", script, s(&raw), s(&out)]);
        assert!(o.status.success(), "python lzma: {}", text(&o.stderr));
        let theirs = std::fs::read(&out).unwrap();
        let mut ours = bytes.to_vec();
        shared::delta::thumb::filter(&mut ours, true);
        assert!(ours == theirs, "our ARM-Thumb filter differs from liblzma's on {name}");
        assert_ne!(&ours, bytes, "the sample has BLs to convert");
        filtered.push(out);
    }
    let id = Base { size: old.len() as u32, sha256: [7; 32], version: "1.3".try_into().unwrap() };
    let codecs = [
        Compression::None,
        Compression::Crle,
        Compression::Heatshrink { window: 8, lookahead: 7 },
        Compression::Heatshrink { window: 11, lookahead: 4 },
    ];
    let mut cases = 0;
    for compression in codecs {
        for filter in [Filter::None, Filter::Thumb] {
            let ours = shared::delta::create(&old, &new, Some(&id), &CreateOptions { filter, compression });
            // Our header off: what is left is a detools sequential patch (of the filtered images
            // with the filter).
            let h = Header::parse(&ours, 1 << 20).unwrap().unwrap();
            assert_eq!((h.filter, h.compression), (filter, compression));
            let detools_part = &ours[Header::emit_ours(&id, filter).len()..];
            let (from, to) = match filter {
                Filter::None => (d.join("old.bin"), new.clone()),
                Filter::Thumb => (filtered[0].clone(), std::fs::read(&filtered[1]).unwrap()),
                Filter::Remap { .. } => unreachable!("LZMA patches are not detools patches"),
            };
            let (p, out) = (d.join("ours.patch"), d.join("rebuilt.bin"));
            std::fs::write(&p, detools_part).unwrap();
            let o = run(detools(), &["apply_patch", s(&from), s(&p), s(&out)]);
            assert!(o.status.success(), "detools apply_patch {compression:?} {filter:?}: {}", text(&o.stderr));
            assert!(std::fs::read(&out).unwrap() == to, "{compression:?} {filter:?}: detools rebuilt other bytes");
            cases += 1;
        }
    }
    assert_eq!(cases, 8);
}

#[test]
fn raw_lzma1_streams_from_pythons_lzma_apply_on_our_device() {
    // An LZMA patch is our header, a map and liblzma's raw LZMA1 stream (lc = lp = pb = 0, end
    // marker). Python's lzma module (its own build of liblzma) makes such streams without a
    // preset dictionary; with an empty map the device's dictionary is the base as it is, which
    // such a stream never reads: the image is rebuilt from the stream alone.
    use shared::delta::{dict_size, lzma_header, Base, Map};
    let d = scratch("python_lzma");
    let (old, new) = (thumb_blob(0), thumb_blob(1));
    let id = Base { size: old.len() as u32, sha256: [7; 32], version: "1.3".try_into().unwrap() };
    let dict = dict_size(old.len(), new.len());
    let script = "import lzma, sys\n\
        d = open(sys.argv[1], 'rb').read()\n\
        f = [{'id': lzma.FILTER_LZMA1, 'lc': 0, 'lp': 0, 'pb': 0, 'dict_size': int(sys.argv[3]), 'preset': 9}]\n\
        open(sys.argv[2], 'wb').write(lzma.compress(d, format=lzma.FORMAT_RAW, filters=f))\n";
    let (raw, out) = (d.join("new.bin"), d.join("new.lzma"));
    std::fs::write(&raw, &new).unwrap();
    let o = run(&venv_python(), &["-c", script, s(&raw), s(&out), &dict.to_string()]);
    assert!(o.status.success(), "python lzma: {}", text(&o.stderr));
    let stream = std::fs::read(&out).unwrap();
    let mut patch = lzma_header(&id, &Map { load: 0x1_0000, shifts: Default::default() }, new.len() as u32, dict);
    patch.extend_from_slice(&stream);
    let rebuilt = xtask::package::apply_delta(&patch, &old, 1 << 20).unwrap();
    assert!(rebuilt == new, "our patcher rebuilt other bytes from Python's stream");
    // And one byte short of its end marker: refused, not a partial image.
    let e = xtask::package::apply_delta(&patch[..patch.len() - 1], &old, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("ends early") || e.contains("LZMA"), "{e}");
}
