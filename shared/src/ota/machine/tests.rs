//! The machine with external modules (a cellular module's FOTA) and the HTTP failure reasons,
//! driven event by event: the actions it hands out and the JSON it publishes.

use super::*;
use crate::alink::{emit_get_reply, emit_push, EscapedStr, Offer};
use crate::ota::{ConfigError, External, HttpError, ModuleError, ModulePhase};
use serde_json::Value;
use std::string::{String as S, ToString};
use std::vec::Vec as V;
use std::{format, vec};

const PK: &str = "a1B2c3D4e5F";
const DN: &str = "dev-001";
const MD5: &str = "1ac1ef01e96caf1be0d329331a4fc2a8";
const OLD: &str = "EC200UCNAAR03A03";
const NEW: &str = "EC200UCNAAR03A04";
const MIN: u64 = 60_000;
/// The running image's SHA-256 and length, as BootReport tells the machine.
const RUNNING_SHA: [u8; 32] = [0x5A; 32];
const RUNNING_LEN: u32 = 40_000;

/// What the machine asked for.
#[derive(Clone, Debug, PartialEq)]
enum Did {
    Pub { topic: S, json: Value, qos1: Option<u16> },
    Update { module: S, url: S },
    Other(S),
}

/// A publish of `kind` (`inform`, `progress`, `get`) with its module (None: the field absent).
#[derive(Clone, Debug, PartialEq)]
struct Msg {
    module: Option<S>,
    step: i64,
    desc: S,
    version: S,
    qos1: bool,
    id: S,
}

fn msgs(did: &[Did], kind: &str) -> V<Msg> {
    did.iter()
        .filter_map(|d| match d {
            Did::Pub { topic, json, qos1 } if topic_kind(topic) == kind => {
                let p = &json["params"];
                let text = |v: &Value| v.as_str().unwrap_or("").to_string();
                Some(Msg {
                    module: p["module"].as_str().map(|s| s.to_string()),
                    step: p["step"].as_str().map_or(0, |s| s.parse().unwrap()),
                    desc: text(&p["desc"]),
                    version: text(&p["version"]),
                    qos1: qos1.is_some(),
                    id: text(&json["id"]),
                })
            }
            _ => None,
        })
        .collect()
}

fn topic_kind(t: &str) -> &'static str {
    if t.starts_with("/ota/device/inform/") {
        "inform"
    } else if t.starts_with("/ota/device/progress/") {
        "progress"
    } else if t.ends_with("/thing/ota/firmware/get") {
        "get"
    } else if t.ends_with("/thing/file/download") {
        "block"
    } else {
        "?"
    }
}

fn modules(m: &[Msg]) -> V<Option<&str>> {
    m.iter().map(|m| m.module.as_deref()).collect()
}

fn updates(did: &[Did]) -> V<(S, S)> {
    did.iter()
        .filter_map(|d| match d {
            Did::Update { module, url } => Some((module.clone(), url.clone())),
            _ => None,
        })
        .collect()
}

fn others(did: &[Did]) -> V<&str> {
    did.iter()
        .filter_map(|d| match d {
            Did::Other(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

fn e(s: &str) -> Option<EscapedStr<'_>> {
    Some(EscapedStr(s))
}

/// A task for the modem: HTTPS, a DFOTA delta.
fn modem_offer<'a>(version: &'a str, url: &'a str) -> Offer<'a> {
    Offer {
        size: Some(300_000),
        version: e(version),
        is_diff: Some(1),
        url: e(url),
        md5: e(MD5),
        sign: e(MD5),
        sign_method: e("Md5"),
        module: e("modem"),
        ..Default::default()
    }
}

/// A task for the app (module MCU): over the MQTT stream, or HTTPS.
fn app_offer(https: bool) -> Offer<'static> {
    Offer {
        size: Some(1000),
        version: e("1.4"),
        url: https.then_some(EscapedStr("https://oss.example/app.bin")),
        md5: e(MD5),
        sign: e(MD5),
        sign_method: e("Md5"),
        module: e("MCU"),
        d_protocol: (!https).then_some(EscapedStr("mqtt")),
        stream_id: (!https).then_some(9),
        ..Default::default()
    }
}

const URL: &str = r"https:\/\/fota.example\/ec200u.bin?a=1\u0026b=2";
const URL_PLAIN: &str = "https://fota.example/ec200u.bin?a=1&b=2";

struct T {
    m: OtaMachine,
    t: u64,
}

impl T {
    /// Booted (app MCU 1.3) with the modem and a GNSS module configured; the modem's version
    /// read, connected.
    fn new() -> T {
        T::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut OtaConfig)) -> T {
        let mut t = T::offline(f);
        t.ev(Event::ModuleVersion { module: "modem", version: OLD });
        t.ev(Event::Connected);
        t
    }

    fn offline(f: impl FnOnce(&mut OtaConfig)) -> T {
        let mut cfg = OtaConfig::new(PK, DN, 64 * 1024, 4096).unwrap();
        cfg.https = true;
        cfg.progress_interval = Duration::from_millis(0);
        cfg.external.push(External::modem()).unwrap();
        cfg.external.push(External::new("gnss", 200).unwrap()).unwrap();
        f(&mut cfg);
        let mut t = T { m: OtaMachine::new(cfg), t: 0 };
        let r = BootReport {
            version: "1.3",
            module: "MCU",
            awaiting_confirm: false,
            outcome: BootOutcome::Nothing,
            floor: Floor::default(),
            raises: Floor::default(),
            resume: None,
            digest: RUNNING_SHA,
            image_len: RUNNING_LEN,
        };
        t.ev(Event::Booted(r));
        t
    }

    fn ev(&mut self, ev: Event<'_>) -> V<Did> {
        self.m.handle(Instant::from_millis(self.t), ev);
        self.drain()
    }

    fn drain(&mut self) -> V<Did> {
        let mut out = vec![];
        while let Some(a) = self.m.poll_action() {
            out.push(match a {
                Action::Publish { topic, payload, qos1 } => {
                    Did::Pub { topic: topic.to_string(), json: serde_json::from_slice(payload).expect("JSON"), qos1 }
                }
                Action::ModuleUpdate { module, url } => Did::Update { module: module.into(), url: url.into() },
                a => Did::Other(format!("{a:?}")),
            });
        }
        out
    }

    fn push(&mut self, o: &Offer<'_>) -> V<Did> {
        let mut b = vec![0u8; 4096];
        let n = emit_push(&mut b, 1695281536874, o).unwrap();
        self.ev(Event::Message { topic: Downlink::Upgrade, payload: &b[..n] })
    }

    fn get_reply(&mut self, id: &str, o: &Offer<'_>) -> V<Did> {
        let mut b = vec![0u8; 4096];
        let n = emit_get_reply(&mut b, id, o).unwrap();
        self.ev(Event::Message { topic: Downlink::FirmwareGetReply, payload: &b[..n] })
    }

    /// Time passes by `ms`; the timers due run.
    fn advance(&mut self, ms: u64) -> V<Did> {
        self.t += ms;
        let now = Instant::from_millis(self.t);
        if self.m.poll_timeout().is_some_and(|t| t <= now) {
            self.m.handle_timeout(now);
        }
        self.drain()
    }

    /// The modem's task taken: the ModuleUpdate handed out.
    fn modem_updating(&mut self) {
        let did = self.push(&modem_offer(NEW, URL));
        assert_eq!(updates(&did), [("modem".into(), URL_PLAIN.into())]);
        assert_eq!(self.m.state(), StateName::ModuleUpdating);
    }
}

fn one(m: V<Msg>) -> Msg {
    assert_eq!(m.len(), 1, "{m:?}");
    m.into_iter().next().unwrap()
}

#[test]
fn at_connect_every_module_with_a_known_version_is_informed_and_pulled_for() {
    let mut t = T::offline(|_| {});
    assert!(t.ev(Event::ModuleVersion { module: "modem", version: OLD }).is_empty(), "offline: at connect");
    assert!(t.ev(Event::ModuleVersion { module: "wifi", version: "1.0" }).is_empty(), "not configured");
    t.ev(Event::ModuleVersion { module: "gnss", version: "G1" });
    let did = t.ev(Event::Connected);
    let inf = msgs(&did, "inform");
    let got: V<_> = inf.iter().map(|m| (m.module.as_deref(), m.version.as_str(), m.qos1)).collect();
    assert_eq!(got, [(Some("MCU"), "1.3", true), (Some("modem"), OLD, true), (Some("gnss"), "G1", true)]);
    assert_eq!(modules(&msgs(&did, "get")), [Some("MCU"), Some("modem"), Some("gnss")]);
    // Each QoS 1 with its own packet id.
    let pids: std::collections::HashSet<_> =
        did.iter().filter_map(|d| if let Did::Pub { qos1, .. } = d { *qos1 } else { None }).collect();
    assert_eq!(pids.len(), 3);

    // A new version while connected: informed at once, and pulled for.
    let did = t.ev(Event::ModuleVersion { module: "modem", version: NEW });
    assert_eq!(one(msgs(&did, "inform")).version, NEW);
    assert_eq!(modules(&msgs(&did, "get")), [Some("modem")]);
    assert_eq!(t.m.module_version("modem"), Some(NEW));
    // The same again: nothing.
    assert!(t.ev(Event::ModuleVersion { module: "modem", version: NEW }).is_empty());
    // Not an Aliyun version: ignored.
    assert!(t.ev(Event::ModuleVersion { module: "modem", version: "EC200U A04" }).is_empty());
    assert_eq!(t.m.module_version("modem"), Some(NEW));
}

#[test]
fn an_external_module_named_like_the_app_module_is_ignored() {
    let mut t = T::offline(|c| c.external[1] = External::new("MCU", 255).unwrap());
    assert!(t.ev(Event::ModuleVersion { module: "MCU", version: "9.9" }).is_empty());
    let did = t.ev(Event::Connected);
    let inf = msgs(&did, "inform");
    assert_eq!(inf.iter().map(|m| (m.module.as_deref(), m.version.as_str())).collect::<V<_>>(), [(Some("MCU"), "1.3")]);
    assert_eq!(t.m.module_version("MCU"), None);
    // Offers for MCU are the app's.
    let did = t.push(&app_offer(false));
    assert_eq!(t.m.state(), StateName::Downloading, "{did:?}");
}

#[test]
fn a_modem_task_is_handed_to_the_board_with_its_url_after_progress_1() {
    let mut t = T::new();
    let did = t.push(&modem_offer(NEW, URL));
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (1, Some("modem"), "modem: updating to EC200UCNAAR03A04")
    );
    assert!(matches!(did.last(), Some(Did::Update { .. })), "progress 1 first: {did:?}");
    assert_eq!(updates(&did), [("modem".into(), URL_PLAIN.into())]);
    assert_eq!(t.m.state(), StateName::ModuleUpdating);
    assert_eq!(t.m.module_task(), Some(("modem", NEW)));
    assert_eq!(t.m.poll_timeout(), Some(Instant::from_millis(30 * MIN)));
    // A re-push of it changes nothing.
    assert!(t.push(&modem_offer(NEW, URL)).is_empty());
}

#[test]
fn module_progress_carries_the_module_and_rises_monotonically() {
    let mut t = T::new();
    t.modem_updating();
    let mut steps = vec![];
    let urcs = [
        (ModulePhase::Download, 0),
        (ModulePhase::Download, 20),
        (ModulePhase::Download, 22),
        (ModulePhase::Download, 60),
        (ModulePhase::Download, 40),
        (ModulePhase::Download, 100),
        (ModulePhase::Install, 0),
        (ModulePhase::Install, 30),
        (ModulePhase::Install, 100),
    ];
    for (phase, percent) in urcs {
        for p in msgs(&t.ev(Event::ModuleProgress { phase, percent }), "progress") {
            assert_eq!(p.module.as_deref(), Some("modem"));
            assert!(!p.qos1);
            steps.push((p.step, p.desc));
        }
    }
    let d = |s: &str| S::from(s);
    assert_eq!(
        steps,
        [
            (10, d("modem: downloading EC200UCNAAR03A04")),
            (30, d("modem: downloading EC200UCNAAR03A04")),
            (50, d("modem: downloading EC200UCNAAR03A04")),
            (65, d("modem: installing EC200UCNAAR03A04")),
            (99, d("modem: installing EC200UCNAAR03A04")),
        ]
    );
    assert_eq!(t.m.state(), StateName::ModuleUpdating);
}

#[test]
fn a_module_that_installed_reports_100_then_its_new_version_is_the_success() {
    let mut t = T::new();
    t.modem_updating();
    t.t = 10 * MIN;
    let did = t.ev(Event::ModuleDone(Ok(())));
    let p = one(msgs(&did, "progress"));
    assert_eq!((p.step, p.module.as_deref(), p.qos1), (100, Some("modem"), true));
    assert_eq!(p.desc, "modem: installed EC200UCNAAR03A04, restarting");
    assert_eq!(t.m.state(), StateName::ModuleRestarting);
    assert_eq!(t.m.poll_timeout(), Some(Instant::from_millis(40 * MIN)));
    // The module restarts: the link drops, the 100 was not acknowledged.
    assert!(t.ev(Event::Disconnected).is_empty());
    assert!(t.ev(Event::ModuleVersion { module: "modem", version: NEW }).is_empty(), "offline");
    assert_eq!(t.m.state(), StateName::AwaitTask);
    let did = t.ev(Event::Connected);
    let p = one(msgs(&did, "progress"));
    assert_eq!((p.step, p.module.as_deref(), p.qos1), (100, Some("modem"), true), "sent again until acked");
    let inf = msgs(&did, "inform");
    assert_eq!(
        inf.iter().map(|m| (m.module.as_deref(), m.version.as_str())).collect::<V<_>>(),
        [(Some("MCU"), "1.3"), (Some("modem"), NEW)]
    );
    assert_eq!(modules(&msgs(&did, "get")), [Some("MCU"), Some("modem")]);
}

#[test]
fn a_version_after_the_restart_while_connected_is_informed_at_once() {
    let mut t = T::new();
    t.modem_updating();
    let did = t.ev(Event::ModuleDone(Ok(())));
    let pid = match &did[..] {
        [Did::Pub { qos1: Some(pid), .. }] => *pid,
        d => panic!("{d:?}"),
    };
    assert!(t.ev(Event::Acked(pid)).is_empty());
    let did = t.ev(Event::ModuleVersion { module: "modem", version: NEW });
    let inf = one(msgs(&did, "inform"));
    assert_eq!((inf.module.as_deref(), inf.version.as_str(), inf.qos1), (Some("modem"), NEW, true));
    assert_eq!(modules(&msgs(&did, "get")), [Some("MCU"), Some("modem")], "idle again: pulls for every module");
    assert!(msgs(&did, "progress").is_empty());
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

#[test]
fn module_errors_are_reported_with_aliyun_s_codes_and_the_module() {
    let cases = [
        (ModuleError::Download(702), -2, "modem: download failed (module HTTP error 702)"),
        (ModuleError::Install(504), -3, "modem: install failed: the module refused the package (error 504)"),
        (ModuleError::Install(510), -3, "modem: install failed: the module refused the package (error 510)"),
        (ModuleError::Install(1), -1, "modem: install failed (module error 1)"),
        (ModuleError::Refused, -1, "modem: the module refused the FOTA command (ERROR)"),
        (ModuleError::Lost, -1, "modem: the module restarted or vanished without a FOTA result"),
    ];
    for (err, step, desc) in cases {
        let mut t = T::new();
        t.modem_updating();
        let did = t.ev(Event::ModuleDone(Err(err)));
        let p = one(msgs(&did, "progress"));
        assert_eq!((p.step, p.module.as_deref(), p.desc.as_str(), p.qos1), (step, Some("modem"), desc, true));
        assert_eq!(crate::ota::FailureKind::of_desc(&p.desc).map(|k| k.is_module()), Some(true), "{desc}");
        assert_eq!(t.m.state(), StateName::AwaitTask);
        // Idle again: every module is pulled for (after the request timeout since the last pull).
        let did = t.advance(10_000);
        assert_eq!(modules(&msgs(&did, "get")), [Some("MCU"), Some("modem")], "{err:?}");
    }
}

#[test]
fn an_mqtt_stream_task_for_the_modem_is_refused() {
    let mut t = T::new();
    let o = Offer { url: None, d_protocol: e("mqtt"), stream_id: Some(5), ..modem_offer(NEW, URL) };
    let did = t.push(&o);
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (-1, Some("modem"), "modem: downloads over HTTPS only (the module fetches the URL itself)")
    );
    assert!(updates(&did).is_empty());
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

#[test]
fn a_url_longer_than_the_module_takes_is_refused() {
    let long = format!("https://fota.example/{}", "x".repeat(300 - 21));
    let mut t = T::new();
    let did = t.push(&modem_offer(NEW, &long));
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (-1, Some("modem"), "modem: URL of 300 bytes; the module takes at most 255")
    );
    assert!(updates(&did).is_empty());
    // 255 bytes once unescaped (the escapes do not count) is taken.
    let fits = format!(r"https:\/\/fota.example\/{}", "x".repeat(255 - 21));
    let mut t = T::new();
    let did = t.push(&modem_offer(NEW, &fits));
    assert_eq!(updates(&did).first().map(|u| u.1.len()), Some(255));
}

#[test]
fn a_diff_package_is_taken_for_the_modem_and_still_refused_for_the_app() {
    let mut t = T::new();
    t.modem_updating(); // modem_offer is isDiff: 1
    let mut t = T::new();
    let o = Offer { is_diff: Some(1), ..app_offer(false) };
    let p = one(msgs(&t.push(&o), "progress"));
    assert_eq!((p.step, p.module.as_deref()), (-1, Some("MCU")));
    assert!(p.desc.starts_with("differential packages are not supported"), "{}", p.desc);
}

#[test]
fn the_modem_s_current_version_offered_is_informed_again() {
    let mut t = T::offline(|_| {});
    t.ev(Event::ModuleVersion { module: "modem", version: OLD });
    for d in t.ev(Event::Connected) {
        if let Did::Pub { qos1: Some(pid), .. } = d {
            t.ev(Event::Acked(pid));
        }
    }
    let did = t.push(&modem_offer(OLD, URL));
    let inf = one(msgs(&did, "inform"));
    assert_eq!((inf.module.as_deref(), inf.version.as_str()), (Some("modem"), OLD));
    assert!(updates(&did).is_empty() && msgs(&did, "progress").is_empty());
    // While that report is unacknowledged, another such offer adds none.
    assert!(t.push(&modem_offer(OLD, URL)).is_empty());
}

#[test]
fn an_app_task_during_a_module_update_is_ignored_and_pulled_for_afterwards() {
    let mut t = T::new();
    t.modem_updating();
    assert!(t.push(&app_offer(false)).is_empty(), "ignored, not refused");
    assert_eq!(t.m.state(), StateName::ModuleUpdating);
    t.ev(Event::ModuleDone(Ok(())));
    let did = t.ev(Event::ModuleVersion { module: "modem", version: NEW });
    let gets = msgs(&did, "get");
    assert_eq!(modules(&gets), [Some("MCU"), Some("modem")]);
    // The platform answers the app's pull with its task: taken now.
    let did = t.get_reply(&gets[0].id, &app_offer(false));
    assert_eq!(t.m.state(), StateName::Downloading);
    assert_eq!(one(msgs(&did, "progress")).module.as_deref(), Some("MCU"));
    assert_eq!(msgs(&did, "block").len(), 1);
}

#[test]
fn a_modem_task_during_an_app_download_is_ignored_and_pulled_for_afterwards() {
    let mut t = T::new();
    t.push(&app_offer(false));
    assert_eq!(t.m.state(), StateName::Downloading);
    assert!(t.push(&modem_offer(NEW, URL)).is_empty(), "ignored, not refused");
    assert_eq!(t.m.state(), StateName::Downloading);
    // The app's download fails: -4 for MCU, then a pull for every module.
    let did = t.ev(Event::FlashFailed { at: 0 });
    let p = one(msgs(&did, "progress"));
    assert_eq!((p.step, p.module.as_deref()), (-4, Some("MCU")));
    let gets = msgs(&t.advance(10_000), "get");
    assert_eq!(modules(&gets), [Some("MCU"), Some("modem")]);
    let did = t.get_reply(&gets[1].id, &modem_offer(NEW, URL));
    assert_eq!(updates(&did), [("modem".into(), URL_PLAIN.into())]);
}

#[test]
fn a_module_update_without_progress_for_module_timeout_fails() {
    let mut t = T::new();
    t.modem_updating();
    t.t = 29 * MIN;
    t.ev(Event::ModuleProgress { phase: ModulePhase::Download, percent: 30 });
    assert_eq!(t.m.poll_timeout(), Some(Instant::from_millis(59 * MIN)), "progress resets the timeout");
    assert!(t.advance(29 * MIN).is_empty());
    let did = t.advance(MIN);
    let p = one(msgs(&did, "progress"));
    assert_eq!((p.step, p.module.as_deref(), p.desc.as_str()), (-1, Some("modem"), "modem: no FOTA result in 30 min"));
    assert_eq!(t.m.state(), StateName::AwaitTask);
    assert_eq!(modules(&msgs(&did, "get")), [Some("MCU"), Some("modem")]);
    // A late result changes nothing.
    assert!(t.ev(Event::ModuleDone(Ok(()))).is_empty());
}

#[test]
fn a_module_that_restarts_with_another_version_or_none_is_failed() {
    let mut t = T::new();
    t.modem_updating();
    t.ev(Event::ModuleDone(Ok(())));
    let did = t.ev(Event::ModuleVersion { module: "modem", version: OLD });
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (-1, Some("modem"), "modem: restarted with EC200UCNAAR03A03, not EC200UCNAAR03A04")
    );
    assert_eq!(one(msgs(&did, "inform")).version, OLD, "the version it runs is reported");
    assert_eq!(t.m.state(), StateName::AwaitTask);

    let mut t = T::with(|c| c.module_timeout = Duration::from_secs(90));
    t.modem_updating();
    t.ev(Event::ModuleDone(Ok(())));
    assert!(t.advance(89_000).is_empty());
    let p = one(msgs(&t.advance(1000), "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (-1, Some("modem"), "modem: no version from the module in 90 s after it installed")
    );
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

/// An HTTPS download of the app's task, its first GET handed out.
fn app_https() -> T {
    let mut t = T::new();
    let did = t.push(&app_offer(true));
    assert!(others(&did).contains(&"HttpGet { from: 0 }"), "{did:?}");
    t
}

#[test]
fn a_chunked_body_fails_the_download_at_once() {
    let mut t = app_https();
    let did = t.ev(Event::HttpFailed(HttpError::Chunked));
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.module.as_deref(), p.desc.as_str()),
        (-2, Some("MCU"), "the server sent a chunked body; Content-Length is required")
    );
    assert!(others(&did).contains(&"HttpClose"));
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

#[test]
fn a_get_that_breaks_while_the_session_is_down_waits_for_it_and_progress_renews_the_tries() {
    let mut t = app_https();
    t.ev(Event::HttpResponse { status: 200, length: Some(1000) });
    t.ev(Event::Disconnected);
    // The link is down (the same modem): no GET, no try counted, however long.
    assert!(others(&t.ev(Event::HttpFailed(HttpError::Connect))).is_empty());
    assert!(others(&t.advance(600_000)).is_empty());
    let did = t.ev(Event::Connected);
    assert!(others(&did).contains(&"HttpGet { from: 0 }"), "the GET once the session is up: {did:?}");
    // Breaks in a row fail the download only without progress in between.
    for i in 0..10u32 {
        t.ev(Event::HttpResponse { status: if i == 0 { 200 } else { 206 }, length: Some(1000 - 64 * i) });
        t.ev(Event::HttpBody(&[0u8; 64]));
        t.ev(Event::HttpFailed(HttpError::Closed));
        t.advance(5000);
    }
    assert_eq!(t.m.state(), StateName::Downloading, "ten breaks, each after progress");
}

#[test]
fn http_broke_names_the_last_error() {
    let mut t = app_https();
    // At once, then after 1 s, then after 2 s (a back-off lets the driver see a link that is
    // down, whose GET then waits for the session).
    for (e, wait) in [(HttpError::Connect, 0), (HttpError::Closed, 1000), (HttpError::Protocol, 2000)] {
        let mut did = t.ev(Event::HttpFailed(e));
        if wait > 0 {
            assert!(others(&did).is_empty(), "no GET at once after {e:?}: {did:?}");
            assert!(others(&t.advance(wait - 1)).is_empty());
            did = t.advance(1);
        }
        assert_eq!(others(&did), ["HttpGet { from: 0 }"], "retried after {e:?}");
    }
    let did = t.ev(Event::HttpFailed(HttpError::Tls));
    let p = one(msgs(&did, "progress"));
    assert_eq!(
        (p.step, p.desc.as_str()),
        (-2, "download broke off at 0 bytes after 3 retries: TLS handshake failed (does the CA cover the host?)")
    );
    // A body that just ends short is a closed connection.
    let mut t = app_https();
    t.ev(Event::HttpResponse { status: 200, length: Some(1000) });
    for _ in 0..3 {
        t.ev(Event::HttpEnd);
        t.advance(5000);
    }
    let p = one(msgs(&t.ev(Event::HttpEnd), "progress"));
    assert_eq!(p.desc, "download broke off at 0 bytes after 3 retries: the connection closed before the body ended");
}

#[test]
fn external_modules_are_checked_with_the_settings() {
    let cfg = || OtaConfig::new(PK, DN, 64 * 1024, 4096).unwrap();
    assert!(External::new("bad name", 255).is_err());
    assert!(External::new("default", 255).is_err());
    assert!(External::new(&"m".repeat(33), 255).is_err());
    assert!(External::new("modem", 0).is_err());
    let mut c = cfg();
    assert!(c.external.is_empty() && c.module_timeout == Duration::from_secs(1800));
    c.external.push(External::modem()).unwrap();
    c.external.push(External::modem()).unwrap();
    assert_eq!(c.check(), Err(ConfigError::External { index: 1, why: "name used twice" }));
    let mut c = cfg();
    c.module_timeout = Duration::from_millis(0);
    assert_eq!(c.check(), Err(ConfigError::ModuleTimeout));
}

/// A patch naming `base` (SHA-256, length) whose detools header says `compression`, then filler.
fn patch_for(sha: [u8; 32], len: u32, compression: u8) -> V<u8> {
    let base = crate::delta::Base { size: len, sha256: sha, version: "1.3".try_into().unwrap() };
    let mut p = crate::delta::Header::emit_ours(&base, crate::delta::Filter::Thumb);
    p.extend_from_slice(&[compression, 0x80 | 0x10, 0x10, 0x44]); // to size 1040, heatshrink w8 l7
    p.extend((0..900u32).map(|i| (i * 7) as u8));
    p
}

fn md5_hex(b: &[u8]) -> S {
    md5::Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// An HTTPS offer of `patch` as a differential package for the app.
fn delta_offer<'a>(patch: &[u8], md5: &'a str) -> Offer<'a> {
    Offer { is_diff: Some(1), size: Some(patch.len() as u32), md5: e(md5), sign: e(md5), ..app_offer(true) }
}

fn delta_t() -> T {
    T::with(|c| c.delta = true)
}

#[test]
fn a_diff_package_naming_the_running_image_is_patched_into_dfu_and_never_resumed() {
    let mut t = delta_t();
    let patch = patch_for(RUNNING_SHA, RUNNING_LEN, 4);
    let sum = md5_hex(&patch);
    let did = t.push(&delta_offer(&patch, &sum));
    assert_eq!(one(msgs(&did, "progress")).step, 1);
    // No early look at the tail (a patch has no image TLVs there), no rehash: a patch from 0.
    assert_eq!(others(&did), ["ClearResume", "BeginPatch", "HttpGet { from: 0 }"]);
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    let (a, b) = patch.split_at(30); // the header arrives in two pieces
    let did = t.ev(Event::HttpBody(a));
    assert_eq!(others(&did), ["Patch { offset: 0, range: 0..30 }"]);
    let did = t.ev(Event::HttpBody(b));
    let o = others(&did);
    assert_eq!(o[0], format!("Patch {{ offset: 30, range: 0..{} }}", b.len()));
    assert_eq!(
        &o[1..],
        ["HttpClose", "VerifyAndMark { patched: true, floor: Floor { sec_cnt: 0, revoked: 0 } }"],
        "no resume point saved: {o:?}"
    );
    let did = t.ev(Event::Marked(Ok(())));
    assert_eq!(one(msgs(&did, "progress")).step, 100);
}

#[test]
fn a_diff_package_for_another_image_is_refused_before_a_byte_is_patched() {
    let mut t = delta_t();
    let patch = patch_for([0xAB; 32], RUNNING_LEN, 4);
    let sum = md5_hex(&patch);
    t.push(&delta_offer(&patch, &sum));
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    let did = t.ev(Event::HttpBody(&patch));
    assert!(others(&did).iter().all(|o| !o.starts_with("Patch")), "{did:?}");
    let p = one(msgs(&did, "progress"));
    assert_eq!((p.step, p.desc.as_str()), (-1, "delta for 1.3 (sha256 abababab...), running 1.3 (sha256 5a5a5a5a...)"));
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

#[test]
fn a_diff_package_the_device_cannot_apply_says_why() {
    for (compression, desc) in [
        (
            1,
            "delta patch refused: compression 1 (lzma); this device takes detools patches in none, crle and heatshrink",
        ),
        (0x14, "delta patch refused: detools patch type 1; only sequential (0) is applied"),
    ] {
        let mut t = delta_t();
        let patch = patch_for(RUNNING_SHA, RUNNING_LEN, compression);
        let sum = md5_hex(&patch);
        t.push(&delta_offer(&patch, &sum));
        t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
        let did = t.ev(Event::HttpBody(&patch));
        let p = one(msgs(&did, "progress"));
        assert_eq!((p.step, p.desc.as_str()), (-1, desc));
    }
    // A board that applies none: refused at the offer.
    let mut t = T::new();
    let patch = patch_for(RUNNING_SHA, RUNNING_LEN, 4);
    let sum = md5_hex(&patch);
    let p = one(msgs(&t.push(&delta_offer(&patch, &sum)), "progress"));
    assert!(p.step == -1 && p.desc.starts_with("differential packages are not supported"), "{p:?}");
}

#[test]
fn a_damaged_patch_is_a_verification_failure() {
    use crate::delta::{Corruption, DeltaError};
    let corrupt = DeltaError::Corrupt { what: Corruption::TooLong, at: 99 };
    let patch = patch_for(RUNNING_SHA, RUNNING_LEN, 4);
    let sum = md5_hex(&patch);
    // While patching.
    let mut t = delta_t();
    t.push(&delta_offer(&patch, &sum));
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    t.ev(Event::HttpBody(&patch[..200]));
    let p = one(msgs(&t.ev(Event::PatchFailed(corrupt)), "progress"));
    assert_eq!((p.step, p.desc.as_str()), (-3, "delta patch corrupt at patch byte 99: data past the image's end"));
    // At its end (it did not end with its image).
    let mut t = delta_t();
    t.push(&delta_offer(&patch, &sum));
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    t.ev(Event::HttpBody(&patch));
    let p = one(msgs(&t.ev(Event::Marked(Err(MarkError::Patch(corrupt)))), "progress"));
    assert_eq!(p.step, -3);
    // Writing DFU failed: -4.
    let mut t = delta_t();
    t.push(&delta_offer(&patch, &sum));
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    t.ev(Event::HttpBody(&patch[..200]));
    let p = one(msgs(&t.ev(Event::PatchFailed(DeltaError::Write { at: 4096 })), "progress"));
    assert_eq!((p.step, p.desc.as_str()), (-4, "flash write failed at 4096"));
}

#[test]
fn a_patch_that_fails_on_its_last_piece_is_reported_by_its_own_reason() {
    use crate::delta::DeltaError;
    // The last piece queues the verify with the patch; when that piece fails, the patcher keeps
    // its error and the verify reports it (found by review: it was reported as "ends early").
    let patch = patch_for(RUNNING_SHA, RUNNING_LEN, 4);
    let sum = md5_hex(&patch);
    let mut t = delta_t();
    t.push(&delta_offer(&patch, &sum));
    t.ev(Event::HttpResponse { status: 200, length: Some(patch.len() as u32) });
    let did = t.ev(Event::HttpBody(&patch));
    assert_eq!(
        others(&did).last(),
        Some(&"VerifyAndMark { patched: true, floor: Floor { sec_cnt: 0, revoked: 0 } }"),
        "{did:?}"
    );
    assert!(t.ev(Event::PatchFailed(DeltaError::Write { at: 8192 })).is_empty(), "the verify reports it");
    let p = one(msgs(&t.ev(Event::Marked(Err(MarkError::Patch(DeltaError::Write { at: 8192 })))), "progress"));
    assert_eq!((p.step, p.desc.as_str()), (-4, "flash write failed at 8192"));
}

#[test]
fn a_payload_handed_in_before_the_last_one_was_written_fails_the_download_not_the_image() {
    let mut t = app_https();
    t.ev(Event::HttpResponse { status: 200, length: Some(1000) });
    let body = [7u8; 400];
    // Written as it should be: the actions are taken before the next body.
    let did = t.ev(Event::HttpBody(&body[..100]));
    assert!(others(&did).contains(&"Write { offset: 0, range: 0..100 }"), "{did:?}");
    // A driver that hands in the next body without taking the first's write: the write is
    // dropped (its range would now index other bytes) and the download fails as a flash write.
    t.m.handle(Instant::from_millis(t.t), Event::HttpBody(&body[100..200]));
    let did = t.ev(Event::HttpBody(&body[200..300]));
    let p = msgs(&did, "progress").pop().expect("a report");
    assert_eq!((p.step, p.desc.as_str()), (-4, "flash write failed at 100"), "{did:?}");
    assert!(!others(&did).iter().any(|a| a.starts_with("Write")), "no stale write is handed out: {did:?}");
    assert_eq!(t.m.state(), StateName::AwaitTask);

    // The stale write was the image's last: the verify and mark it led to go with it.
    let body = [7u8; 1000];
    let md5 = md5_hex(&body);
    let mut t = T::new();
    let did = t.push(&Offer { md5: e(&md5), sign: e(&md5), ..app_offer(true) });
    assert!(others(&did).contains(&"HttpGet { from: 0 }"), "{did:?}");
    t.ev(Event::HttpResponse { status: 200, length: Some(1000) });
    t.ev(Event::HttpBody(&body[..900]));
    t.m.handle(Instant::from_millis(t.t), Event::HttpBody(&body[900..]));
    let did = t.ev(Event::HttpBody(&body[..10]));
    let p = msgs(&did, "progress").pop().expect("a report");
    assert_eq!((p.step, p.desc.as_str()), (-4, "flash write failed at 900"), "{did:?}");
    assert!(!others(&did).iter().any(|a| a.starts_with("VerifyAndMark")), "never marked: {did:?}");
    assert_eq!(t.m.state(), StateName::AwaitTask);
}

#[test]
fn the_first_block_request_goes_out_before_the_resume_page_is_erased() {
    // Its round trip then runs while the flash erases (an nRF52840 page: 85 ms); its reply is
    // taken only after the erase, so the order of the flash work is unchanged.
    let mut t = T::new();
    let did = t.push(&app_offer(false));
    let order: V<&str> = did
        .iter()
        .filter_map(|d| match d {
            Did::Pub { topic, .. } if topic.ends_with("/thing/file/download") => Some("request"),
            Did::Other(s) if s.starts_with("ClearResume") => Some("erase"),
            Did::Other(s) if s.starts_with("BeginDownload") => Some("begin"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["begin", "request", "erase"], "{did:?}");
}
