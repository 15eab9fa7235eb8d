//! `cargo xtask release` for the thumb boards: the folder, the manifest, the factory image.

mod common;
use common::*;
use md5::{Digest as _, Md5};
use memory_layouts::Board;
use serde_json::Value;
use sha2::Sha256;

fn release(board: Board) -> std::path::PathBuf {
    let d = scratch(&format!("release_{}", board.name()));
    let key = d.join("k.pem");
    xtask_ok(&["keygen", "--out", s(&key)]);
    let out = d.join("rel");
    xtask_ok(&[
        "release",
        "--board",
        board.name(),
        "--version",
        "V1.4",
        "--module",
        "MCU",
        "--sec-cnt",
        "5",
        "--key",
        s(&key),
        "--out",
        s(&out),
    ]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let bin = std::fs::read(out.join("firmware-V1.4.bin")).unwrap();
    assert_eq!(manifest["file"], "firmware-V1.4.bin");
    assert_eq!(manifest["board"], board.name());
    assert_eq!(manifest["module"], "MCU");
    assert_eq!(manifest["version"], "V1.4");
    assert_eq!(manifest["image_version"], "1.4.0+0");
    assert_eq!(manifest["sec_cnt"], 5);
    assert_eq!(manifest["size"], bin.len());
    assert_eq!(manifest["md5"], hex::encode(Md5::digest(&bin)));
    assert_eq!(manifest["sha256"], hex::encode(Sha256::digest(&bin)));

    // The .bin is what imgtool and we accept, and it fits ACTIVE.
    let o = run(imgtool(), &["verify", "-k", s(&key), s(&out.join("firmware-V1.4.bin"))]);
    assert!(o.status.success(), "imgtool verify: {}", text(&o.stdout));
    let v = xtask_ok(&["verify", s(&out.join("firmware-V1.4.bin")), "--key", s(&key), "--board", board.name()]);
    assert!(v.contains("AliyunModule   \"MCU\"") && v.contains("AliyunVersion  \"V1.4\""), "{v}");

    // Factory: bootloader at the flash origin, the very same image in ACTIVE, erased state.
    let l = board.layout();
    let f = std::fs::read(out.join("factory.bin")).unwrap();
    assert_eq!(manifest["factory"], "factory.bin");
    let at = |r: memory_layouts::Region| (r.origin - l.flash.origin) as usize;
    let active = at(l.active);
    assert_eq!(&f[active..active + bin.len()], &bin[..]);
    // The bootloader's vector table: initial SP inside RAM, reset vector inside BOOTLOADER (thumb bit).
    let sp = u32::from_le_bytes(f[0..4].try_into().unwrap());
    let reset = u32::from_le_bytes(f[4..8].try_into().unwrap());
    assert!(sp > l.ram.origin && sp <= l.ram.end(), "initial SP {sp:#x}");
    assert!(reset & 1 == 1 && (l.bootloader.origin..l.bootloader.end()).contains(&(reset & !1)), "reset {reset:#x}");
    for r in [l.boot_record, l.state] {
        assert!(f[at(r)..at(r) + r.length as usize].iter().all(|&b| b == l.geometry.erased), "{r:?} not erased");
    }
    if board == Board::QemuAn386 {
        assert_eq!(f.len() as u32, l.flash.length, "QEMU's mps.ram backing file is exactly 16 MiB");
    }
    // The app inside the image links at ACTIVE + header size: its vector table is there.
    let hdr = l.image_header_size as usize;
    let app_reset = u32::from_le_bytes(bin[hdr + 4..hdr + 8].try_into().unwrap());
    assert!((l.app_origin()..l.active.end()).contains(&(app_reset & !1)), "app reset {app_reset:#x}");
    out
}

#[test]
fn release_for_qemu_an386_makes_the_folder() {
    release(Board::QemuAn386);
}

#[test]
fn release_for_nrf52840_dk_makes_the_folder() {
    let out = release(Board::Nrf52840Dk);
    // Flashing and provisioning go through probe-rs; without it, say how to get it.
    let without_probe_rs = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env("PROBE_RS", "/nonexistent/probe-rs")
            .output()
            .unwrap();
        assert!(!o.status.success());
        text(&o.stderr)
    };
    let err = without_probe_rs(&["flash", "--board", "nrf52840-dk", "--release", s(&out)]);
    assert!(err.contains("probe-rs is not installed") && err.contains("cargo install probe-rs-tools"), "{err}");
    let err = without_probe_rs(&[
        "provision",
        "--board",
        "nrf52840-dk",
        "--product-key",
        "a1B2c3D4e5F",
        "--device-name",
        "dev-001",
        "--device-secret",
        "secret",
        "--host",
        "iot-06z00.mqtt.iothub.aliyuncs.com",
    ]);
    assert!(err.contains("probe-rs is not installed"), "{err}");
    // A folder that is no release is refused before any probe is touched.
    let err = xtask_err(&["flash", "--board", "nrf52840-dk", "--release", s(&out.join("nowhere"))]);
    assert!(err.contains("not a release folder"), "{err}");
}

#[test]
fn release_refuses_a_version_aliyun_would_refuse() {
    let d = scratch("release_bad_version");
    for v in ["1.4 beta", "版本1", ""] {
        let err = xtask_err(&["release", "--board", "qemu-an386", "--version", v, "--out", s(&d)]);
        assert!(err.contains("would be refused by Aliyun"), "{v:?}: {err}");
    }
    let err = xtask_err(&["release", "--board", "qemu-an386", "--version", "release-candidate", "--out", s(&d)]);
    assert!(err.contains("--image-version"), "{err}");
    assert!(std::fs::read_dir(&d).unwrap().next().is_none(), "nothing is written on refusal");
}

#[test]
fn provision_defaults_to_tls_on_8883_and_plain_1883_only_when_asked() {
    let d = scratch("provision_defaults");
    let flash = d.join("flash.bin");
    let l = Board::QemuAn386.layout();
    let args = |extra: &[&str]| {
        std::fs::write(&flash, vec![0xFFu8; l.flash.length as usize]).unwrap();
        let mut a = vec!["provision", "--board", "qemu-an386", "--flash", s(&flash), "--product-key", "a1B2c3D4e5F"];
        a.extend(["--device-name", "dev-001", "--device-secret", "x", "--host", "iot-06z00.mqtt.iothub.aliyuncs.com"]);
        a.extend(extra);
        xtask_ok(&a);
        let f = std::fs::read(&flash).unwrap();
        let at = (l.provision.origin - l.flash.origin) as usize;
        let p = shared::provision::decode(&f[at..at + l.provision.length as usize]).unwrap();
        (p.tls, p.port)
    };
    assert_eq!(args(&[]), (true, 8883));
    assert_eq!(args(&["--plain"]), (false, 1883));
    assert_eq!(args(&["--plain", "--port", "1999"]), (false, 1999));
    assert_eq!(args(&["--port", "443"]), (true, 443));
}

#[test]
fn release_delta_from_writes_the_patch_and_refuses_bases_it_cannot_patch() {
    let d = scratch("release_delta");
    let key = d.join("k.pem");
    xtask_ok(&["keygen", "--out", s(&key)]);
    let rel = |v: &str, size: &str, extra: &[&str]| -> std::process::Output {
        let out = d.join(v);
        let mut args = vec!["release", "--board", "host", "--version", v, "--key", s(&key), "--body-size", size];
        args.extend_from_slice(extra);
        args.extend(["--out", s(&out)]);
        xtask(&args)
    };
    assert!(rel("1.3", "30000", &[]).status.success());
    let base = d.join("1.3");
    let o = rel("1.4", "30010", &["--delta-from", s(&base)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: Value = serde_json::from_slice(&std::fs::read(d.join("1.4/manifest.json")).unwrap()).unwrap();
    let patch = std::fs::read(d.join("1.4/delta-1.3-1.4.bin")).unwrap();
    let image = std::fs::read(d.join("1.4/firmware-1.4.bin")).unwrap();
    let b = std::fs::read(base.join("firmware-1.3.bin")).unwrap();
    assert_eq!(m["delta"]["file"], "delta-1.3-1.4.bin");
    assert_eq!(m["delta"]["from"], "1.3");
    assert_eq!(m["delta"]["from_size"], b.len());
    assert_eq!(m["delta"]["size"], patch.len());
    assert_eq!(m["delta"]["md5"], hex::encode(Md5::digest(&patch)));
    assert!(patch.len() < image.len() / 10, "{} of {}", patch.len(), image.len());
    // The device's patcher rebuilds the image from the base.
    assert!(xtask::package::apply_delta(&patch, &b, 1 << 21).unwrap() == image);
    // An image file as the base works the same.
    let o = rel("1.5", "30000", &["--delta-from", s(&base.join("firmware-1.3.bin"))]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Bases it cannot patch, each said clearly.
    let other = d.join("other.pem");
    xtask_ok(&["keygen", "--out", s(&other)]);
    let foreign = d.join("foreign");
    xtask_ok(&["release", "--board", "host", "--version", "1.2", "--key", s(&other), "--out", s(&foreign)]);
    let module = d.join("module");
    xtask_ok(&[
        "release",
        "--board",
        "host",
        "--version",
        "1.2",
        "--key",
        s(&key),
        "--module",
        "MCU",
        "--out",
        s(&module),
    ]);
    for (from, says) in [
        (foreign, "does not verify with the trusted keys"),
        (module, "the base is module \"MCU\""),
        (base.clone(), "the base is version 1.3 too"),
        (d.join("nothing"), "--delta-from"),
    ] {
        let version = if says.contains("version 1.3") { "1.3" } else { "1.6" };
        let o = rel(version, "30000", &["--delta-from", s(&from)]);
        let e = text(&o.stderr);
        assert!(!o.status.success() && e.contains(says), "{}: {e}", from.display());
    }
}
