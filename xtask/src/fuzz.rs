//! `cargo xtask fuzz [TARGET] [--time S] [--runs N]`: the cargo-fuzz targets of `fuzz/`, one per
//! parser of bytes from outside, each for S seconds (libFuzzer `-max_total_time`), from its
//! committed seeds (`fuzz/corpus/<target>/`) plus what earlier runs found (`target/fuzz/corpus/`).
//! Prints executions, exec/s, corpus size and crashes per target; fails on a crash and names the
//! artifact (`fuzz/artifacts/<target>/`). `--seeds` rewrites the seed corpora from the project's
//! test vectors. Installs nightly (rustup) and cargo-fuzz (crates.io) when they are missing.

use crate::tools;
use anyhow::{bail, ensure, Context, Result};
use shared::alink::{
    emit_download_error, emit_download_reply, emit_get_reply, emit_push, EscapedStr, ExtData, Offer, OfferFile,
    OfferFiles,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every target, in the order they run.
pub const TARGETS: [&str; 11] = [
    "alink_offer",
    "alink_download",
    "image_verify",
    "boot_record",
    "boot_resume",
    "provision",
    "mqtt",
    "modem",
    "http",
    "ota_machine",
    "delta",
];

/// How the targets are built and run: no sanitizer (the code under test is safe Rust; ASan would
/// halve the executions), debug assertions and overflow checks on.
const BUILD_FLAGS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

#[derive(clap::Args)]
pub struct Args {
    /// One target (default: every one, one after the other).
    #[arg(value_parser = TARGETS)]
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Also stop a target after this many executions.
    #[arg(long)]
    runs: Option<u64>,
    /// Write the seed corpora (fuzz/corpus/) from the project's test vectors, then stop.
    #[arg(long)]
    seeds: bool,
}

/// What one target's run did.
#[derive(Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub execs: u64,
    pub exec_per_s: u64,
    pub corpus: u64,
    pub secs: f64,
    /// The crash (or timeout / out-of-memory) input libFuzzer wrote.
    pub crash: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if a.seeds {
        return write_seeds(&fuzz_dir().join("corpus"));
    }
    let targets: Vec<&'static str> = match &a.target {
        Some(t) => TARGETS.iter().copied().filter(|x| x == t).collect(),
        None => TARGETS.to_vec(),
    };
    let outcomes = campaign(&targets, a.time, a.runs)?;
    print_table(&outcomes);
    let crashed: Vec<_> = outcomes.iter().filter_map(|o| o.crash.as_ref().map(|c| (o.target, c))).collect();
    for (t, c) in &crashed {
        eprintln!("{t}: crash input {} (replay: cargo +nightly fuzz run {t} {})", c.display(), c.display());
    }
    ensure!(crashed.is_empty(), "{} target(s) crashed", crashed.len());
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    crate::root().join("fuzz")
}

/// Prints one line per target.
pub fn print_table(outcomes: &[Outcome]) {
    println!("{:<16} {:>14} {:>10} {:>8} {:>8}  crash", "target", "executions", "exec/s", "corpus", "time s");
    for o in outcomes {
        let crash = o.crash.as_ref().map_or("none".to_string(), |c| c.display().to_string());
        println!("{:<16} {:>14} {:>10} {:>8} {:>8.0}  {crash}", o.target, o.execs, o.exec_per_s, o.corpus, o.secs);
    }
}

/// Builds every target once, then runs each of `targets` for `secs` seconds (or `runs`
/// executions).
pub fn campaign(targets: &[&'static str], secs: u64, runs: Option<u64>) -> Result<Vec<Outcome>> {
    tools::cargo_fuzz()?;
    let dir = fuzz_dir();
    let st = Command::new("cargo")
        .current_dir(&dir)
        .args(["+nightly", "fuzz", "build"])
        .args(BUILD_FLAGS)
        .status()
        .context("running cargo +nightly fuzz build")?;
    ensure!(st.success(), "cargo fuzz build failed");
    targets.iter().map(|t| run_target(t, secs, runs)).collect()
}

fn run_target(target: &'static str, secs: u64, runs: Option<u64>) -> Result<Outcome> {
    let dir = fuzz_dir();
    let work = crate::root().join("target/fuzz");
    let corpus = work.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log = work.join(format!("{target}.log"));
    replay_regressions(target, &dir)?;
    eprintln!("fuzz: {target} for {secs} s (log {})", log.display());
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .args(["+nightly", "fuzz", "run"])
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&corpus)
        .arg(dir.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-print_final_stats=1"]);
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    let t0 = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let text = std::fs::read_to_string(&log)?;
    let mut o = parse_log(target, &text);
    o.secs = t0.elapsed().as_secs_f64();
    if !out.success() && o.crash.is_none() {
        bail!("{target}: cargo fuzz run failed without a crash artifact (see {})", log.display());
    }
    Ok(o)
}

/// Runs `target` once over each of its past crash inputs (`fuzz/regressions/<target>-*`): a
/// fixed bug that comes back fails here, before any fuzzing.
fn replay_regressions(target: &str, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("regressions"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{target}-"))))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    files.sort();
    let out = Command::new("cargo")
        .current_dir(dir)
        .args(["+nightly", "fuzz", "run"])
        .args(BUILD_FLAGS)
        .arg(target)
        .args(&files)
        .output()
        .with_context(|| format!("replaying the regressions of {target}"))?;
    ensure!(
        out.status.success(),
        "{target}: a past crash input crashes again ({:?}):\n{}",
        files,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("fuzz: {target}: {} past crash input(s) replayed, none crashes", files.len());
    Ok(())
}

/// Reads libFuzzer's output: the final stats, the last status line, the artifact written.
fn parse_log(target: &'static str, text: &str) -> Outcome {
    let stat = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("stat::{name}:")).and_then(|v| v.trim().parse::<u64>().ok()))
    };
    // "#123456	DONE   cov: 158 ft: 835 corp: 572/19Kb lim: 4096 exec/s: 540818 rss: 28Mb"
    let last = text.lines().rev().find(|l| l.starts_with('#') && l.contains("corp:"));
    let field = |l: &str, key: &str| -> Option<u64> {
        let rest = l.split(key).nth(1)?.trim_start();
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let execs = stat("number_of_executed_units").or_else(|| last.and_then(|l| field(l, "#"))).unwrap_or(0);
    let exec_per_s = stat("average_exec_per_sec").or_else(|| last.and_then(|l| field(l, "exec/s:"))).unwrap_or(0);
    let corpus = last.and_then(|l| field(l, "corp:")).unwrap_or(0);
    let crash = text.lines().find_map(|l| l.split("Test unit written to ").nth(1)).map(|p| PathBuf::from(p.trim()));
    Outcome { target, execs, exec_per_s, corpus, secs: 0.0, crash }
}

/// Writes `dir/<target>/<name>` seed files built from the project's test vectors.
pub fn write_seeds(dir: &Path) -> Result<()> {
    let mut n = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        n += 1;
        Ok(())
    };
    for (name, json) in offers()? {
        put("alink_offer", &name, &json)?;
    }
    for (name, frame) in frames()? {
        put("alink_download", &name, &frame)?;
    }
    // An image signed by imgtool itself (the shared crate's test data).
    let imgtool = crate::root().join("shared/src/testdata/imgtool-signed.bin");
    put("image_verify", "imgtool-signed", &std::fs::read(&imgtool).with_context(|| imgtool.display().to_string())?)?;
    put("image_verify", "dev-key-signed", &signed_image(200, 2)?)?;

    let rec = {
        let mut buf = [0u8; shared::boot::record::MAX_ENCODED];
        let len = shared::boot::BootRecord::default().encode(&mut buf, 4);
        buf[..len].to_vec()
    };
    let mut region = vec![0u8, 0];
    region.extend_from_slice(&rec);
    put("boot_record", "one-record", &region)?;
    region.resize(2 + 1024 + 128, 0xFF);
    region.extend_from_slice(&rec);
    put("boot_record", "both-halves", &region)?;

    put("boot_resume", "three-saves", &resume_page()?)?;

    let p = shared::provision::Provision {
        product_key: "a1B2c3D4e5F",
        device_name: "dev-001",
        device_secret: "s3cr3t",
        sign_method: "hmacsha256",
        host: "iot-06z00.mqtt.iothub.aliyuncs.com",
        port: 8883,
        tls: true,
        apn: "CMNET",
    };
    let mut page = vec![0u8; 1 + 512];
    let len = p.encode(&mut page[1..]).map_err(|e| anyhow::anyhow!("{e}"))?;
    page.truncate(1 + len);
    put("provision", "tls-8883", &page)?;

    put("mqtt", "session", &mqtt_session())?;
    for (name, t) in modem_transcripts() {
        put("modem", name, &t)?;
    }
    for (name, s) in ota_scripts() {
        put("ota_machine", name, &s)?;
    }
    put("http", "oss-url-206", &http_seed())?;
    for (name, p) in delta_patches() {
        put("delta", name, &p)?;
    }
    println!("wrote {n} seeds under {}", dir.display());
    Ok(())
}

/// An OSS-style URL and a 206 head, the split byte first.
fn http_seed() -> Vec<u8> {
    let url = b"https://iotx-ota.oss-cn-shanghai.aliyuncs.com/ota/a/b.bin?Expires=1&OSSAccessKeyId=k&Signature=s%2B";
    let mut v = vec![url.len() as u8];
    v.extend_from_slice(url);
    v.extend_from_slice(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 12\r\nAccept-Ranges: bytes\r\n\r\nbody");
    v
}

/// Patches of every codec and filter against the fuzz target's base (its first 6000 bytes), the
/// piece-size byte first.
fn delta_patches() -> Vec<(&'static str, Vec<u8>)> {
    use shared::delta::{create, Base, Compression, CreateOptions, Filter};
    let base: Vec<u8> = (0..6000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut target = base.clone();
    target[100..140].fill(0x42);
    target.splice(3000..3000, [0xF0, 0xF7, 0xFE, 0xFF, 1, 2, 3, 4]);
    let id = Base { size: 6000, sha256: [1; 32], version: "1.3".try_into().expect("short") };
    let mut out = Vec::new();
    let cases: [(&'static str, Filter, Compression); 5] = [
        ("none", Filter::None, Compression::None),
        ("crle", Filter::None, Compression::Crle),
        ("heatshrink-8-7", Filter::None, Compression::Heatshrink { window: 8, lookahead: 7 }),
        ("heatshrink-11-4-thumb", Filter::Thumb, Compression::Heatshrink { window: 11, lookahead: 4 }),
        ("lzma-remap", Filter::Remap { load: 0x1000, shifts: 0 }, Compression::Lzma { dict_size: 0 }),
    ];
    for (name, filter, compression) in cases {
        let mut p = vec![13u8];
        p.extend(create(&base, &target, Some(&id), &CreateOptions { filter, compression }));
        out.push((name, p));
    }
    // A plain detools patch (no header of ours).
    let mut p = vec![5u8];
    p.extend(create(&base, &target, None, &CreateOptions { filter: Filter::None, compression: Compression::Crle }));
    out.push(("plain-detools-crle", p));
    out
}

fn e(s: &str) -> Option<EscapedStr<'_>> {
    Some(EscapedStr(s))
}

/// Pushes and get_replies as the console emits them, and the captured real push (the one shared::alink::offer tests).
fn offers() -> Result<Vec<(String, Vec<u8>)>> {
    const MD5: &str = "2e78f357f54732c90f3bebb2fb6a3865";
    let mqtt = Offer {
        size: Some(4252),
        version: e("1.1"),
        md5: e(MD5),
        sign: e(MD5),
        sign_method: e("Md5"),
        d_protocol: e("mqtt"),
        stream_id: Some(12332),
        stream_file_id: Some(1),
        ..Offer::default()
    };
    let mut ext = ExtData::default();
    let _ = ext.0.push((EscapedStr("key1"), EscapedStr("value1")));
    let _ = ext.0.push((EscapedStr("_package_udi"), EscapedStr(r#"{\"ota_notice\":\"x\"}"#)));
    let https = Offer {
        size: Some(432945),
        version: e("2.0.0"),
        url: e(r"https:\/\/iotx-ota.oss-cn-shanghai.aliyuncs.com\/ota\/pkg.bin?Expires=1502955804\u0026Signature=XXXX"),
        md5: e("93230c3bde425a9d7984a594ac55ea1e"),
        sign: e("93230c3bde425a9d7984a594ac55ea1e"),
        sign_method: e("Md5"),
        digestsign: e("A4WOP"),
        module: e("MCU"),
        ext_data: Some(ext),
        ..Offer::default()
    };
    let first = OfferFile {
        file_name: e("a.bin"),
        file_url: e(r"https:\/\/x\/a"),
        file_size: Some(7),
        file_sign: e("BE45CB2605BF36BEBDE684841A28F0FD43C69850A3DCE5FEDBA69928EE3A8991"),
        file_md5: None,
    };
    let files = Offer {
        version: e("3"),
        sign_method: e("SHA256"),
        files: Some(OfferFiles { first, count: 1 }),
        ..Offer::default()
    };
    let mut out = vec![0u8; 2048];
    let mut v = Vec::new();
    let n = emit_push(&mut out, 1695281536874, &mqtt)?;
    v.push(("push-mqtt".to_string(), out[..n].to_vec()));
    let n = emit_push(&mut out, 1626969597470, &https)?;
    v.push(("push-https-ext".to_string(), out[..n].to_vec()));
    let n = emit_get_reply(&mut out, "12", &files)?;
    v.push(("get-reply-files".to_string(), out[..n].to_vec()));
    let n = emit_get_reply(&mut out, "13", &Offer::default())?;
    v.push(("get-reply-empty".to_string(), out[..n].to_vec()));
    Ok(v)
}

/// Block replies: the MQTT stream frame of shared::alink::download, a refusal, a 256-byte block without a token.
fn frames() -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![0u8; 1024];
    let mut v = Vec::new();
    let data: Vec<u8> = (0..16).collect();
    let n = emit_download_reply(&mut out, "1", Some("default"), 4096, 0, &data)?;
    v.push(("aliyun-md-frame".to_string(), out[..n].to_vec()));
    let n = emit_download_error(&mut out, "7", 400, "file size has exceeded the limit 16 MB")?;
    v.push(("refused".to_string(), out[..n].to_vec()));
    let n = emit_download_reply(&mut out, "2", None, 5092, 256, &[0xAB; 256])?;
    v.push(("block-256".to_string(), out[..n].to_vec()));
    Ok(v)
}

/// An image signed with the development key (not the key the target trusts).
fn signed_image(len: usize, sec_cnt: u32) -> Result<Vec<u8>> {
    let key = crate::keys::load_signing_key(&crate::keys::dev_key())?;
    let body: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let p = shared::image::SignParams {
        header_size: 0x200,
        version: shared::image::ImageVersion { major: 1, minor: 4, revision: 0, build: 0 },
        sec_cnt,
        module: Some("MCU"),
        aliyun_version: Some("V1.4"),
        revoke_keys: 0,
    };
    Ok(shared::image::sign_image(&body, &p, &key))
}

/// The spare page after three saves (control byte 0 first: CRCs as written).
fn resume_page() -> Result<Vec<u8>> {
    use shared::boot::resume::save;
    use shared::ota::Resume;
    let mut dfu = shared::sim::SimFlash::<4096, 16>::new(3 * 4096, 0xFF);
    for i in 1..=3u32 {
        save(&mut dfu, Resume { key: [i as u8; 16], written: i * 4096 }).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let mut v = vec![0u8];
    v.extend_from_slice(&dfu.bytes()[2 * 4096..2 * 4096 + 3 * 32]);
    Ok(v)
}

/// A broker's side: CONNACK, SUBACK, a QoS 1 push, a PUBACK, a PINGRESP, an oversized PUBLISH.
fn mqtt_session() -> Vec<u8> {
    let mut s = vec![0x04]; // 1 KiB buffer
    s.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]);
    s.extend_from_slice(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x01]);
    let topic = b"/ota/device/upgrade/a1B2c3D4e5F/dev-001";
    let payload = br#"{"code":"1000","data":{"size":4252,"streamId":12332,"dProtocol":"mqtt","version":"1.1"},"id":1,"message":"success"}"#;
    let rem = 2 + topic.len() + 2 + payload.len();
    s.extend_from_slice(&[0x32, (rem & 0x7F) as u8 | 0x80, (rem >> 7) as u8, 0, topic.len() as u8]);
    s.extend_from_slice(topic);
    s.extend_from_slice(&[0x00, 0x05]);
    s.extend_from_slice(payload);
    s.extend_from_slice(&[0x40, 0x02, 0x80, 0x01, 0xD0, 0x00]);
    // 3000 bytes announced, only the head sent: read and dropped.
    s.extend_from_slice(&[0x30, 0xB8, 0x17, 0x00, 0x03, b'a', b'/', b'b']);
    s.extend_from_slice(&[0x55; 64]);
    s
}

/// What a Quectel module answers to the bring-up (modem.rs's doc), plain and TLS with a CA.
fn modem_transcripts() -> Vec<(&'static str, Vec<u8>)> {
    let ok = "\r\nOK\r\n";
    let head = format!(
        "{ok}{ok}{ok}\r\n+CPIN: READY\r\n{ok}\r\n+CEREG: 0,1\r\n{ok}{ok}\r\n+QIACT: 1,1,1,\"10.0.0.2\"\r\n{ok}"
    );
    let plain = format!("\x00{head}\r\nCONNECT\r\n\x20\x02\x00\x00\r\nNO CARRIER\r\n");
    let tls = format!(
        "\x03{head}{ok}\r\nCONNECT\r\n\r\n+QFUPL: 59,1234\r\n{ok}{ok}{ok}{ok}{ok}\r\nCONNECT\r\n\x20\x02\x00\x00"
    );
    // The first AT unanswered (a modem in data mode: 0x00 is a pause), then ERROR to QIOPEN.
    let escape = format!("\x00\x00\x00{head}\r\nERROR\r\n");
    vec![("plain", plain.into_bytes()), ("tls-ca", tls.into_bytes()), ("escape-error", escape.into_bytes())]
}

/// OtaMachine scripts (`shared::ota::script::op`): an MQTT upgrade end to end, an HTTPS one, a
/// downgrade refused from the protected TLVs, a resumed download, a write that fails.
fn ota_scripts() -> Vec<(&'static str, Vec<u8>)> {
    use shared::ota::script::op::*;
    // page 256, 16 pages of slot, 256-byte blocks, window 4, 3 retries, progress every 5 %,
    // flags, 10 s timeout, image.
    let setup = |flags: u8, image: u16| {
        let mut s = vec![0, 15, 0, 3, 3, 4, flags, 9];
        s.extend_from_slice(&image.to_le_bytes());
        s
    };
    let blocks = |n: usize| [BLOCK, 0, 0, 0, 0].repeat(n);
    let mut mqtt = setup(0, 1000);
    mqtt.extend_from_slice(&[CONNECT, PUSH, 0, 0, 0, 0]);
    mqtt.extend(blocks(4));
    mqtt.extend_from_slice(&[COMPLETE, 2, ACK, 0, ACK, 0, CONNECT, COMPLETE, 1, COMPLETE, 1]);
    let mut https = setup(setup::HTTPS, 1000);
    https.extend_from_slice(&[CONNECT, PUSH, offer::HTTPS, 0, 0, 0, HTTP_RESPONSE, 0, 0]);
    https.extend_from_slice(&[HTTP_BODY, 0x00, 0x02, 0, HTTP_BODY, 0xE8, 0x03, 0, HTTP_END, COMPLETE, 2, ACK, 0]);
    let mut downgrade = setup(setup::SEC_CNT, 0);
    downgrade.extend_from_slice(&[CONNECT, PUSH, 0, 0, 0, 0]);
    downgrade.extend(blocks(3));
    downgrade.extend_from_slice(&[TIMEOUT, TICK, 0xE8, 0x03]);
    let mut resume = setup(setup::RESUME | setup::PREFILLED, 1000);
    resume.extend_from_slice(&[CONNECT, PUSH, 0, 0, 0, 0, COMPLETE, 1]);
    resume.extend(blocks(2));
    resume.extend_from_slice(&[DISCONNECT, TIMEOUT, CONNECT]);
    resume.extend(blocks(2));
    resume.extend_from_slice(&[COMPLETE, 2]);
    // A write fails at the end of the first page, its resume point queued behind it; the same
    // package again.
    let mut write_fails = setup(0, 1000);
    write_fails.extend_from_slice(&[CONNECT, PUSH, 0, 0, 0, 0, FLASH_FAILED]);
    write_fails.extend(blocks(2));
    write_fails.extend_from_slice(&[TIMEOUT, GET_REPLY, 0, 0, 0, 0, 0]);
    write_fails.extend(blocks(4));
    vec![
        ("mqtt-upgrade", mqtt),
        ("https-upgrade", https),
        ("downgrade", downgrade),
        ("resume", resume),
        ("write-fails", write_fails),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_output_is_read() {
        let log = "#2\tINITED cov: 4 ft: 5 corp: 1/1b exec/s: 0 rss: 27Mb\n\
                   #7030644\tDONE   cov: 158 ft: 835 corp: 572/19Kb lim: 4096 exec/s: 540818 rss: 28Mb\n\
                   stat::number_of_executed_units: 7030644\nstat::average_exec_per_sec:     540818\n";
        let o = parse_log("alink_offer", log);
        assert_eq!((o.execs, o.exec_per_s, o.corpus, o.crash), (7030644, 540818, 572, None));
        let crash = "#646\tNEW    cov: 74 ft: 81 corp: 14/46b lim: 4 exec/s: 0 rss: 27Mb L: 4/4 MS: 1 ChangeByte-\n\
                     artifact_prefix='a/'; Test unit written to a/crash-18d1\nBase64: AoIAAA==\n";
        let o = parse_log("mqtt", crash);
        assert_eq!((o.execs, o.corpus, o.crash), (646, 14, Some(PathBuf::from("a/crash-18d1"))));
    }

    #[test]
    fn every_target_has_seeds() {
        let dir = std::env::temp_dir().join(format!("xtask-seeds-{}", std::process::id()));
        write_seeds(&dir).unwrap();
        for t in TARGETS {
            assert!(std::fs::read_dir(dir.join(t)).unwrap().count() > 0, "{t}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
