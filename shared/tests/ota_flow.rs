//! OtaMachine in memory under a simulated clock, against a scripted console that answers block
//! requests and HTTP GETs from a real signed image. Every bad input of DESIGN.md / ALIYUN.md gets
//! its documented reaction.

use ed25519_dalek::SigningKey;
use md5::{Digest, Md5};
use serde_json::Value;
use shared::alink::{emit_download_reply, Downlink, Topics};
use shared::image::{sign_image, ImageError, ImageVersion, SignParams};
use shared::ota::{Action, BootOutcome, BootReport, Event, MarkError, OtaConfig, OtaMachine, Resume, StateName};
use shared::time::{Duration, Instant};

const PK: &str = "a1B2c3D4e5F";
const DN: &str = "dev-001";
const PAGE: u32 = 4096;

fn image(len: usize, sec_cnt: u32) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let p = SignParams {
        header_size: 0x200,
        version: ImageVersion { major: 1, minor: 4, revision: 0, build: 0 },
        sec_cnt,
        module: Some("default"),
        aliyun_version: Some("1.4"),
    };
    sign_image(&body, &p, &SigningKey::from_bytes(&[3; 32]))
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// What the console does with block requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Net {
    Answer,
    /// Drops every request (lost blocks).
    Drop,
}

struct Harness {
    m: OtaMachine<'static>,
    now: Instant,
    image: Vec<u8>,
    dfu: Vec<u8>,
    dfu_pos: u32,
    published: Vec<(String, Value)>,
    requests: Vec<(u32, u32)>,
    http_gets: Vec<u32>,
    saved: Option<Resume>,
    log: Vec<String>,
    net: Net,
    /// Mangle the n-th block reply (counting from 0).
    corrupt_reply: Option<usize>,
    replies: usize,
    fail_writes_at: Option<u32>,
    mark: Result<(), MarkError>,
    /// Replies in the order the requests went out, as a broker delivers them.
    pending: std::collections::VecDeque<Vec<u8>>,
    delivering: bool,
}

fn config() -> OtaConfig<'static> {
    let mut c = OtaConfig::new(Topics { product_key: PK, device_name: DN }, "default", 64 * 1024, PAGE);
    c.block_size = 1024;
    c.window = 4;
    c.request_timeout = Duration::from_secs(10);
    c.retries = 3;
    c.progress_interval = Duration::from_millis(0);
    c
}

impl Harness {
    fn new(image: Vec<u8>) -> Self {
        Self::with_config(config(), image)
    }

    fn with_config(cfg: OtaConfig<'static>, image: Vec<u8>) -> Self {
        Harness {
            m: OtaMachine::new(cfg),
            now: Instant::from_millis(0),
            image,
            dfu: vec![0xFF; 64 * 1024 + 4096],
            dfu_pos: 0,
            published: vec![],
            requests: vec![],
            http_gets: vec![],
            saved: None,
            log: vec![],
            net: Net::Answer,
            corrupt_reply: None,
            replies: 0,
            fail_writes_at: None,
            mark: Ok(()),
            pending: Default::default(),
            delivering: false,
        }
    }

    fn boot(&mut self, version: &str, outcome: BootOutcome, awaiting_confirm: bool, sec_cnt: u32) {
        let resume = self.saved;
        let r = BootReport { version, module: "default", awaiting_confirm, outcome, sec_cnt, resume };
        self.send(Event::Booted(r), &[]);
    }

    fn send(&mut self, ev: Event<'_>, payload: &[u8]) {
        self.m.handle(self.now, ev);
        self.drain(payload);
    }

    fn msg(&mut self, topic: Downlink, payload: &[u8]) {
        let p = payload.to_vec();
        self.send(Event::Message { topic, payload: &p }, &p);
    }

    /// Carries out every action; block requests are answered (or not) by the console.
    fn drain(&mut self, payload: &[u8]) {
        while let Some(a) = self.m.poll_action() {
            match a {
                Action::Publish { topic, payload: p } => {
                    let v: Value = serde_json::from_slice(p).expect("we publish JSON");
                    if topic.ends_with("/thing/file/download") {
                        let off = v["params"]["fileBlock"]["offset"].as_u64().unwrap() as u32;
                        let len = v["params"]["fileBlock"]["size"].as_u64().unwrap() as u32;
                        self.requests.push((off, len));
                        if self.net == Net::Answer {
                            let data = &self.image[off as usize..(off + len) as usize];
                            let mut out = vec![0u8; data.len() + 300];
                            let n = emit_download_reply(&mut out, "1", Some("ota"), self.image.len() as u32, off, data)
                                .unwrap();
                            out.truncate(n);
                            if self.corrupt_reply == Some(self.replies) {
                                let k = out.len() - 5;
                                out[k] ^= 0xFF;
                            }
                            self.replies += 1;
                            self.pending.push_back(out);
                        }
                    }
                    if topic.contains("/progress/") {
                        let d = v["params"]["desc"].as_str().unwrap();
                        assert!(d.len() <= 128, "desc longer than 128: {d}");
                        let step: i32 = v["params"]["step"].as_str().expect("step is a string").parse().unwrap();
                        assert!((1..=100).contains(&step) || (-4..=-1).contains(&step), "bad step {step}");
                    }
                    self.published.push((topic.to_string(), v));
                }
                Action::Write { offset, range } => {
                    assert_eq!(offset, self.dfu_pos, "writes are sequential");
                    if self.fail_writes_at.is_some_and(|f| offset >= f) {
                        self.log.push("write failed".into());
                        self.m.handle(self.now, Event::FlashFailed);
                        continue;
                    }
                    let data = &payload[range];
                    self.dfu[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                    self.dfu_pos += data.len() as u32;
                }
                Action::BeginDownload { at } => {
                    assert_eq!(at % PAGE, 0);
                    self.dfu_pos = at;
                    self.log.push(format!("begin {at}"));
                }
                Action::Rehash { len } => {
                    self.log.push(format!("rehash {len}"));
                    let bytes = self.dfu[..len as usize].to_vec();
                    self.m.rehash(&bytes);
                    self.m.handle(self.now, Event::Rehashed(true));
                }
                Action::SaveProgress(r) => self.saved = Some(r),
                Action::ClearProgress => self.saved = None,
                Action::HttpGet { from } => {
                    self.http_gets.push(from);
                    self.log.push(format!("GET {} from {from}", self.m.url().unwrap()));
                }
                Action::HttpClose => self.log.push("http close".into()),
                Action::VerifyAndMark => {
                    self.log.push("verify+mark".into());
                    self.m.handle(self.now, Event::Marked(self.mark));
                }
                Action::RunSelfTest => self.log.push("self-test".into()),
                Action::Confirm => self.log.push("confirm".into()),
                Action::Reset => self.log.push("reset".into()),
            }
        }
        if !self.delivering {
            self.delivering = true;
            while let Some(r) = self.pending.pop_front() {
                self.msg(Downlink::DownloadReply, &r);
            }
            self.delivering = false;
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        if self.m.poll_timeout().is_some_and(|t| t <= self.now) {
            self.m.handle_timeout(self.now);
            self.drain(&[]);
        }
    }

    fn steps(&self) -> Vec<(i32, String)> {
        self.published
            .iter()
            .filter(|(t, _)| t.contains("/progress/"))
            .map(|(_, v)| {
                (v["params"]["step"].as_str().unwrap().parse().unwrap(), v["params"]["desc"].as_str().unwrap().into())
            })
            .collect()
    }

    fn last_step(&self) -> (i32, String) {
        self.steps().last().cloned().expect("a progress report")
    }

    fn topics(&self) -> Vec<String> {
        self.published.iter().map(|(t, _)| t.clone()).collect()
    }

    fn mqtt_push(&self, version: &str, md5: &str, size: usize) -> Vec<u8> {
        format!(
            r#"{{"code":"1000","data":{{"size":{size},"streamId":12332,"sign":"{md5}","dProtocol":"mqtt","version":"{version}","signMethod":"Md5","streamFileId":1,"md5":"{md5}"}},"id":1695281536874,"message":"success"}}"#
        )
        .into_bytes()
    }

    fn https_push(&self, url: &str) -> Vec<u8> {
        let (size, md5) = (self.image.len(), md5_hex(&self.image));
        format!(r#"{{"code":"1000","id":1,"data":{{"size":{size},"version":"1.4","url":"{url}","md5":"{md5}","sign":"{md5}","signMethod":"Md5","extData":{{"k":"v"}}}}}}"#)
            .into_bytes()
    }

    fn start_mqtt(&mut self) {
        let push = self.mqtt_push("1.4", &md5_hex(&self.image), self.image.len());
        self.msg(Downlink::Upgrade, &push);
    }

    /// Serves the HTTP body in chunks from the last GET, up to `upto` bytes of the image.
    /// Serves the last GET, and every GET the machine opens while being served (it reads the
    /// image's tail early), in `chunk`-byte pieces. A GET that starts below `break_at` breaks off
    /// there (the connection drops). Returns once a response ended with no new GET opened during it.
    fn serve_http(&mut self, status: u16, break_at: usize, chunk: usize) {
        loop {
            let gets = self.http_gets.len();
            let from = *self.http_gets.last().unwrap() as usize;
            let len = (self.image.len() - from) as u32;
            let status = if from > 0 && status == 200 { 206 } else { status };
            self.send(Event::HttpResponse { status, length: Some(len) }, &[]);
            let end = if from < break_at { break_at.min(self.image.len()) } else { self.image.len() };
            let body = self.image[from..end].to_vec();
            let mut reopened = false;
            for c in body.chunks(chunk) {
                self.send(Event::HttpBody(c), c);
                if self.http_gets.len() != gets {
                    reopened = true;
                    break;
                }
            }
            if reopened {
                continue;
            }
            self.send(Event::HttpEnd, &[]);
            return;
        }
    }
}

/// A download_reply frame for `data` at `off` of a file of `len` bytes.
fn frame(len: usize, off: u32, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; data.len() + 300];
    let n = emit_download_reply(&mut out, "1", None, len as u32, off, data).unwrap();
    out.truncate(n);
    out
}

fn booted_connected(image: Vec<u8>) -> Harness {
    let mut h = Harness::new(image);
    h.boot("1.3", BootOutcome::Nothing, false, 0);
    h.send(Event::Connected, &[]);
    h
}

#[test]
fn at_boot_it_informs_its_version_then_pulls() {
    let h = booted_connected(image(1000, 0));
    assert_eq!(h.topics(), [format!("/ota/device/inform/{PK}/{DN}"), format!("/sys/{PK}/{DN}/thing/ota/firmware/get")]);
    assert_eq!(h.published[0].1["params"]["version"], "1.3");
    assert!(h.published[0].1["params"].get("module").is_none(), "module omitted for the default module");
    assert!(h.published[0].1["id"].is_string());
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn a_new_image_self_tests_confirms_then_informs_the_new_version() {
    let mut h = Harness::new(image(1000, 0));
    h.boot("1.4", BootOutcome::Nothing, true, 0);
    h.send(Event::Connected, &[]);
    assert_eq!(h.log, ["self-test"]);
    assert!(h.published.is_empty(), "nothing is reported before the image confirmed");
    h.send(Event::SelfTest(true), &[]);
    assert_eq!(h.log, ["self-test", "confirm"]);
    h.send(Event::Confirmed(true), &[]);
    assert_eq!(h.published[0].1["params"]["version"], "1.4");
}

#[test]
fn a_failed_self_test_resets_without_reporting() {
    let mut h = Harness::new(image(1000, 0));
    h.boot("1.6", BootOutcome::Nothing, true, 0);
    h.send(Event::Connected, &[]);
    h.send(Event::SelfTest(false), &[]);
    assert_eq!(h.log, ["self-test", "reset"]);
    assert!(h.published.is_empty());
}

#[test]
fn after_a_revert_it_reports_minus_one_then_the_version_that_runs() {
    let mut h = Harness::new(image(1000, 0));
    h.boot("1.4", BootOutcome::Reverted, false, 0);
    h.send(Event::Connected, &[]);
    assert_eq!(h.steps(), [(-1, "new image did not confirm itself; reverted to 1.4".to_string())]);
    assert!(h.topics()[1].contains("/inform/"));
    assert_eq!(h.published[1].1["params"]["version"], "1.4");
}

#[test]
fn after_a_refused_swap_it_reports_why() {
    let mut h = Harness::new(image(1000, 0));
    h.boot("1.3", BootOutcome::Refused(ImageError::BadSignature), false, 0);
    h.send(Event::Connected, &[]);
    assert_eq!(h.steps(), [(-1, "bootloader refused the image: bad Ed25519 signature".to_string())]);
}

#[test]
fn a_full_mqtt_download_writes_dfu_verifies_marks_and_resets() {
    let img = image(20_000, 0);
    let mut h = booted_connected(img.clone());
    h.start_mqtt();
    assert!(h.dfu[..img.len()] == img[..], "DFU differs from the image");
    assert_eq!(h.log.last().unwrap(), "reset");
    assert!(h.log.contains(&"verify+mark".to_string()));
    let steps: Vec<i32> = h.steps().iter().map(|s| s.0).collect();
    assert_eq!(steps[0], 1);
    assert_eq!(*steps.last().unwrap(), 100);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(steps.len() <= 22, "throttled to 5% steps: {steps:?}");
    assert_eq!(h.saved, None, "progress forgotten once marked");
    assert_eq!(h.m.state(), StateName::AwaitReset);
}

#[test]
fn several_block_requests_are_in_flight() {
    let img = image(20_000, 0);
    let mut h = booted_connected(img);
    h.net = Net::Drop;
    h.start_mqtt();
    // 4 in the window, plus nothing else until replies come.
    assert_eq!(h.requests, [(0, 1024), (1024, 1024), (2048, 1024), (3072, 1024)]);
}

#[test]
fn lost_blocks_are_requested_again_then_fail_with_minus_two() {
    let img = image(5000, 0);
    let mut h = booted_connected(img);
    h.net = Net::Drop;
    h.start_mqtt();
    for _ in 0..3 {
        h.advance(Duration::from_secs(10));
    }
    assert_eq!(h.requests.len(), 4 * 4, "each block asked 4 times (1 + 3 retries)");
    assert_eq!(h.m.state(), StateName::Downloading);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.last_step(), (-2, "no reply for the block at 0 after 4 requests".to_string()));
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn a_lost_block_is_recovered_by_its_retry() {
    let img = image(5000, 0);
    let mut h = booted_connected(img.clone());
    h.corrupt_reply = Some(1); // the block at 1024 arrives with a bad CRC and is ignored
    h.start_mqtt();
    assert_eq!(h.m.state(), StateName::Downloading);
    assert_eq!(h.dfu_pos, 1024, "nothing after the hole is written");
    h.advance(Duration::from_secs(10));
    assert!(h.dfu[..img.len()] == img[..], "DFU differs from the image");
    assert_eq!(h.last_step().0, 100);
}

#[test]
fn stale_and_duplicate_blocks_are_ignored() {
    let img = image(5000, 0);
    let mut h = booted_connected(img.clone());
    h.net = Net::Drop;
    h.start_mqtt();
    let reply = |off: u32, data: &[u8]| frame(img.len(), off, data);
    h.msg(Downlink::DownloadReply, &reply(0, &img[..1024]));
    assert_eq!(h.dfu_pos, 1024);
    h.msg(Downlink::DownloadReply, &reply(0, &img[..1024])); // duplicate
    h.msg(Downlink::DownloadReply, &reply(1024, &img[1024..1500])); // wrong length
    h.msg(Downlink::DownloadReply, &reply(2048, &img[2048..3072])); // early
    assert_eq!(h.dfu_pos, 1024, "none of them written");
    h.msg(Downlink::DownloadReply, &reply(1024, &img[1024..2048]));
    assert_eq!(h.dfu_pos, 2048);
}

#[test]
fn a_duplicate_push_of_the_task_in_progress_is_ignored() {
    let img = image(20_000, 0);
    let mut h = booted_connected(img);
    h.net = Net::Drop;
    h.start_mqtt();
    let before = (h.requests.len(), h.published.len());
    h.start_mqtt();
    assert_eq!((h.requests.len(), h.published.len()), before);
}

#[test]
fn a_task_for_another_module_is_ignored() {
    let mut h = booted_connected(image(1000, 0));
    let n = h.published.len();
    let push = br#"{"code":"1000","id":1,"data":{"size":10,"version":"9","url":"https://x/y","md5":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5","module":"WIFI"}}"#;
    h.msg(Downlink::Upgrade, push);
    assert_eq!(h.published.len(), n);
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn malformed_and_empty_tasks_change_nothing() {
    let mut h = booted_connected(image(1000, 0));
    let n = h.published.len();
    for p in [&b"{\"code\":200,\"data\":{}}"[..], b"garbage", b"{\"code\":\"1000\",\"data\":{\"size\":\"x\"}}", b""] {
        h.msg(Downlink::FirmwareGetReply, p);
    }
    assert_eq!(h.published.len(), n);
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn an_image_too_large_for_dfu_is_refused_before_download() {
    let mut h = booted_connected(image(1000, 0));
    let push = h.mqtt_push("1.4", "1ac1ef01e96caf1be0d329331a4fc2a8", 70_000);
    h.msg(Downlink::Upgrade, &push);
    assert_eq!(h.last_step(), (-1, "image of 70000 bytes does not fit the 65536-byte slot".to_string()));
    assert!(h.requests.is_empty());
}

#[test]
fn an_image_below_the_security_counter_is_refused_after_reading_its_tail() {
    let img = image(20_000, 1);
    let mut h = Harness::new(img);
    h.boot("1.3", BootOutcome::Nothing, false, 5);
    h.send(Event::Connected, &[]);
    h.start_mqtt();
    assert_eq!(h.last_step(), (-1, "security counter 1 below the device's 5: downgrade refused".to_string()));
    assert!(h.dfu_pos < 8 * 1024, "stopped early, wrote {}", h.dfu_pos);
    assert!(!h.log.contains(&"verify+mark".to_string()));
}

#[test]
fn a_digest_mismatch_is_minus_three() {
    let img = image(5000, 0);
    let mut h = booted_connected(img.clone());
    let push = h.mqtt_push("1.4", "00000000000000000000000000000000", img.len());
    h.msg(Downlink::Upgrade, &push);
    assert_eq!(h.last_step(), (-3, "MD5 of the download differs from the task's".to_string()));
    assert!(!h.log.contains(&"verify+mark".to_string()));
}

#[test]
fn our_signature_check_refusing_is_minus_three_and_a_low_counter_minus_one() {
    for (e, step) in [
        (ImageError::BadSignature, -3),
        (ImageError::UnknownKey, -3),
        (ImageError::CounterTooLow { image: 1, stored: 2 }, -1),
    ] {
        let mut h = booted_connected(image(3000, 0));
        h.mark = Err(MarkError::Image(e));
        h.start_mqtt();
        assert_eq!(h.last_step().0, step, "{e:?}");
        assert_eq!(h.m.state(), StateName::AwaitTask);
        assert!(!h.log.contains(&"reset".to_string()));
    }
}

#[test]
fn a_flash_error_is_minus_four() {
    let mut h = booted_connected(image(9000, 0));
    h.fail_writes_at = Some(4096);
    h.start_mqtt();
    assert_eq!(h.last_step(), (-4, "flash write failed at 5120".to_string()));
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn progress_is_never_zero_and_starts_at_one() {
    let mut h = booted_connected(image(30_000, 0));
    h.start_mqtt();
    let steps = h.steps();
    assert_eq!(steps[0].0, 1);
    assert!(steps.iter().all(|s| s.0 != 0));
}

#[test]
fn a_reconnect_during_download_asks_again_from_what_was_written() {
    let img = image(20_000, 0);
    let mut h = booted_connected(img.clone());
    h.net = Net::Drop;
    h.start_mqtt();
    h.send(Event::Disconnected, &[]);
    h.requests.clear();
    h.net = Net::Answer;
    h.send(Event::Connected, &[]);
    assert_eq!(h.requests[0], (0, 1024));
    assert!(h.dfu[..img.len()] == img[..], "DFU differs from the image");
}

#[test]
fn after_a_reset_the_download_resumes_from_the_last_page_boundary() {
    let img = image(30_000, 0);
    let mut h = booted_connected(img.clone());
    h.net = Net::Drop;
    h.start_mqtt();
    // Feed blocks by hand up to 10 KiB, then "reset".
    let reply = |off: u32, data: &[u8]| frame(img.len(), off, data);
    for off in (0..10 * 1024).step_by(1024) {
        let o = off as u32;
        h.msg(Downlink::DownloadReply, &reply(o, &img[off..off + 1024]));
    }
    let saved = h.saved.expect("a resume point");
    assert_eq!(saved.written, 8192, "the last page boundary");
    let dfu = h.dfu.clone();

    let mut h2 = Harness::new(img.clone());
    h2.dfu = dfu;
    h2.saved = Some(saved);
    h2.boot("1.3", BootOutcome::Nothing, false, 0);
    h2.send(Event::Connected, &[]);
    h2.start_mqtt();
    assert!(h2.log.contains(&"rehash 8192".to_string()), "{:?}", h2.log);
    assert!(h2.log.contains(&"begin 8192".to_string()), "{:?}", h2.log);
    assert_eq!(h2.requests[0], (8192, 1024), "not from zero");
    assert!(h2.requests.iter().all(|r| r.0 >= 8192 || r.0 == 0x200 + 30_000));
    assert!(h2.dfu[..img.len()] == img[..], "DFU differs from the image");
    assert_eq!(h2.last_step().0, 100);
}

#[test]
fn a_resume_point_of_another_task_is_not_used() {
    let img = image(10_000, 0);
    let mut h = Harness::new(img.clone());
    h.saved = Some(Resume { key: [7; 16], written: 4096 });
    h.boot("1.3", BootOutcome::Nothing, false, 0);
    h.send(Event::Connected, &[]);
    h.start_mqtt();
    assert!(h.log.contains(&"begin 0".to_string()));
    assert_eq!(h.requests[0], (0, 1024));
}

#[test]
fn an_https_download_with_range_resumes_after_a_broken_connection() {
    let img = image(12_000, 0);
    let mut h = booted_connected(img.clone());
    let push = h.https_push("https:\\/\\/oss.example\\/pkg.bin?Expires=1&Signature=x");
    h.msg(Downlink::Upgrade, &push);
    assert_eq!(h.http_gets, [0]);
    assert!(h.log.contains(&"GET https://oss.example/pkg.bin?Expires=1&Signature=x from 0".to_string()), "{:?}", h.log);
    h.serve_http(200, 5000, 700); // the connection breaks after 5000 bytes
    let tail = 0x200 + 12_000; // the protected TLVs, read right after the header
    assert_eq!(h.http_gets, [0, tail, 700, 5000], "the tail early, then the rest with Range");
    h.serve_http(206, img.len(), 1500);
    let first_diff = h.dfu.iter().zip(&img).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "DFU differs; gets {:?} log {:?}", h.http_gets, h.log);
    assert_eq!(h.last_step().0, 100);
}

#[test]
fn an_expired_https_url_is_refreshed_with_firmware_get() {
    let img = image(6000, 0);
    let mut h = booted_connected(img.clone());
    let push = h.https_push("https://oss.example/old");
    h.msg(Downlink::Upgrade, &push);
    let gets_before = h.topics().iter().filter(|t| t.ends_with("/firmware/get")).count();
    h.send(Event::HttpResponse { status: 403, length: None }, &[]);
    h.send(Event::HttpEnd, &[]);
    assert_eq!(h.topics().iter().filter(|t| t.ends_with("/firmware/get")).count(), gets_before + 1);
    let reply = String::from_utf8(h.https_push("https://oss.example/fresh"))
        .unwrap()
        .replace("\"code\":\"1000\"", "\"code\":200");
    h.msg(Downlink::FirmwareGetReply, reply.as_bytes());
    assert!(h.log.iter().any(|l| l == "GET https://oss.example/fresh from 0"), "{:?}", h.log);
    h.serve_http(200, img.len(), 4096);
    assert_eq!(h.last_step().0, 100);
}

#[test]
fn an_https_error_status_is_minus_two() {
    let mut h = booted_connected(image(6000, 0));
    let push = h.https_push("https://oss.example/x");
    h.msg(Downlink::Upgrade, &push);
    h.send(Event::HttpResponse { status: 404, length: None }, &[]);
    assert_eq!(h.last_step(), (-2, "HTTP 404 from the download server".to_string()));
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn the_same_version_as_running_is_not_downloaded() {
    let mut h = booted_connected(image(6000, 0));
    let push = h.mqtt_push("1.3", "1ac1ef01e96caf1be0d329331a4fc2a8", 6000);
    h.msg(Downlink::Upgrade, &push);
    assert!(h.requests.is_empty());
}

#[test]
fn stop_and_wait_keeps_one_request_in_flight() {
    let mut cfg = config();
    cfg.window = 1;
    let mut h = Harness::with_config(cfg, image(8000, 0));
    h.boot("1.3", BootOutcome::Nothing, false, 0);
    h.send(Event::Connected, &[]);
    h.net = Net::Drop;
    h.start_mqtt();
    assert_eq!(h.requests, [(0, 1024)]);
}

#[test]
fn an_expired_url_with_no_fresh_one_coming_is_minus_two() {
    let mut h = booted_connected(image(6000, 0));
    let push = h.https_push("https://oss.example/old");
    h.msg(Downlink::Upgrade, &push);
    h.send(Event::HttpResponse { status: 403, length: None }, &[]);
    assert_eq!(h.m.state(), StateName::Downloading);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.last_step(), (-2, "the download URL expired and no fresh one came".to_string()));
    assert_eq!(h.m.state(), StateName::AwaitTask);
}

#[test]
fn an_https_image_below_the_security_counter_is_refused_after_reading_its_tail() {
    let img = image(20_000, 1);
    let mut h = Harness::new(img);
    h.boot("1.3", BootOutcome::Nothing, false, 5);
    h.send(Event::Connected, &[]);
    let push = h.https_push("https://oss.example/x");
    h.msg(Downlink::Upgrade, &push);
    h.serve_http(200, usize::MAX, 1024);
    assert_eq!(h.last_step(), (-1, "security counter 1 below the device's 5: downgrade refused".to_string()));
    assert_eq!(h.dfu_pos, 1024, "only the first piece was written");
    assert_eq!(h.http_gets, [0, 0x200 + 20_000]);
}
