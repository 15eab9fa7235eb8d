//! The OTA job engine: Aliyun's OTA service as the device sees it over MQTT, without I/O. Uplinks
//! (topic, payload) and the clock go in; downlinks come out of `take_outbox`. The console's broker
//! link and HTTP server carry them, and the tests drive it in memory against `OtaMachine`.
//!
//! It is a strict twin of the platform: where Aliyun refuses or limits something, so does it.
//!
//! | rule | what the engine does |
//! |---|---|
//! | targeting | a job ships one package (module + destination version) to devices whose last informed version of the module is one of its sources (any when none), all of them or the ones it names (`TargetSelection` SPECIFIC); one task per device at a time |
//! | push | to matching online devices when the job is created, and again on every reconnect while the task is not done (not with `need_push = false`: those devices must pull) |
//! | `firmware/get` | answered with the device's task (pending or in progress), else `"data":{}` |
//! | success | the device informs the destination version |
//! | failure | progress `0` or a negative step; an inform of a version that is neither the source nor the destination; the timeout, which runs from the first progress report |
//! | block requests | 256..=131072 bytes (the last block of the file may be shorter), a known stream and file, an offset inside the file, a device with a task for it: else an error reply (`code` 400/404 with `msg`), never silence; optionally served one at a time (others dropped) |
//! | pushes | `signMethod` `Md5` (with `md5`) or `SHA256` (without), `isDiff: 1` only for differential packages, `extData` (batch tags, `_package_udi`) as given, payload at most 256 KB |
//! | differential packages | a job of one targets exactly its source version (`from` = `[source]`), and not the destination |
//! | URLs | pre-signed, valid 24 h by default |

use super::auth::DeviceId;
use anyhow::{ensure, Context, Result};
use md5::Md5;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use shared::alink::{EscapedStr, ExtData, Offer, OfferFile, OfferFiles};
use shared::ota::FailureKind;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest PUBLISH payload Aliyun carries.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Largest file an MQTT stream batch ships.
pub const MAX_STREAM_FILE: usize = 16 * 1024 * 1024;

/// A firmware package: the signed image of a release folder, or its differential package.
#[derive(Clone, Debug)]
pub struct Package {
    pub file: String,
    pub module: String,
    pub version: String,
    pub bytes: Arc<Vec<u8>>,
    pub md5: String,
    pub sha256: String,
    /// A differential package (CreateOTAFirmware `Type` 1): the one version it applies to.
    pub src_version: Option<String>,
}

#[derive(Deserialize)]
struct ManifestView {
    module: String,
    version: String,
    file: String,
    md5: String,
    delta: Option<DeltaView>,
}

#[derive(Deserialize)]
struct DeltaView {
    file: String,
    from: String,
    md5: String,
}

impl Package {
    /// Reads a folder made by `cargo xtask release`.
    pub fn load(dir: &Path) -> Result<Package> {
        let m = std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{} is not a release folder (no manifest.json)", dir.display()))?;
        let m: ManifestView = serde_json::from_slice(&m).with_context(|| format!("{}/manifest.json", dir.display()))?;
        let bytes =
            std::fs::read(dir.join(&m.file)).with_context(|| format!("reading {}/{}", dir.display(), m.file))?;
        let p = Package::new(&m.file, &m.module, &m.version, bytes);
        ensure!(p.md5 == m.md5, "{}/{}: MD5 {} but the manifest says {}", dir.display(), m.file, p.md5, m.md5);
        Ok(p)
    }

    /// The differential package from `from` of a folder made by `cargo xtask release
    /// --delta-from`.
    pub fn load_delta(dir: &Path, from: &str) -> Result<Package> {
        let m = std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{} is not a release folder (no manifest.json)", dir.display()))?;
        let m: ManifestView = serde_json::from_slice(&m).with_context(|| format!("{}/manifest.json", dir.display()))?;
        let d = m.delta.with_context(|| {
            format!("{} has no differential package: make it with `cargo xtask release --delta-from`", dir.display())
        })?;
        ensure!(d.from == from, "{} has the differential package from {}, not from {from}", dir.display(), d.from);
        let bytes =
            std::fs::read(dir.join(&d.file)).with_context(|| format!("reading {}/{}", dir.display(), d.file))?;
        let mut p = Package::new(&d.file, &m.module, &m.version, bytes);
        ensure!(p.md5 == d.md5, "{}/{}: MD5 {} but the manifest says {}", dir.display(), d.file, p.md5, d.md5);
        p.src_version = Some(d.from);
        Ok(p)
    }

    pub fn new(file: &str, module: &str, version: &str, bytes: Vec<u8>) -> Package {
        Package {
            file: file.into(),
            module: module.into(),
            version: version.into(),
            md5: hex::encode(Md5::digest(&bytes)),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: Arc::new(bytes),
            src_version: None,
        }
    }

    /// The same package with one byte flipped and its digests recomputed, as if the file had been
    /// altered before the upload: only the image signature can tell.
    pub fn tampered(&self, offset: usize) -> Package {
        let mut b = self.bytes.to_vec();
        b[offset] ^= 0x01;
        Package { src_version: self.src_version.clone(), ..Package::new(&self.file, &self.module, &self.version, b) }
    }
}

/// How the device downloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT file stream (`dProtocol: mqtt`, `thing/file/download`).
    Mqtt,
    /// A URL on the console's HTTP(S) server, with Range.
    Https,
}

/// The digest the push announces (`signMethod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestKind {
    Md5,
    Sha256,
}

/// What a test makes the console send that Aliyun would not (or that this firmware cannot carry
/// out), to see the device answer it. Never set by `console.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// `isDiff: 1` (a differential package; the bytes are still the full image).
    Diff,
    /// This `signMethod` instead of the real one.
    SignMethod(String),
    /// `files[]` with this many copies of the file (a multi-file package).
    Files(u16),
    /// Leave this field out (`size`, `sign`, `md5`, `url`, `streamId`, `version`, `signMethod`).
    Omit(&'static str),
    /// This destination version in the push (Aliyun would refuse to create it).
    Version(String),
}

/// What a job is made of.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub package: Package,
    /// Source versions; empty = any version other than the destination.
    pub from: Vec<String>,
    pub protocol: Protocol,
    pub digest: DigestKind,
    /// `TimeoutInMinutes` (1..=1440 min), from the first progress report; `None`: no timeout.
    pub timeout: Option<Duration>,
    /// `NeedPush`: false means devices get the task only by asking (`firmware/get`).
    pub need_push: bool,
    /// `TargetSelection` SPECIFIC: only these device names (none: every device of the product).
    pub devices: Option<Vec<String>>,
    /// `extData`: batch tags (up to 10) and `_package_udi` (up to 4096 characters).
    pub ext_data: Vec<(String, String)>,
    pub quirks: Vec<Quirk>,
}

impl JobSpec {
    /// A job of `package` for any source version, pushed, no timeout, no extData.
    pub fn new(package: Package, protocol: Protocol) -> JobSpec {
        JobSpec {
            package,
            from: vec![],
            protocol,
            digest: DigestKind::Md5,
            timeout: None,
            need_push: true,
            devices: None,
            ext_data: vec![],
            quirks: vec![],
        }
    }

    /// What the Aliyun API (CreateOTAFirmware, CreateOTA*UpgradeJob) refuses.
    fn check(&self) -> Result<()> {
        let p = &self.package;
        ensure!(shared::alink::valid_version(&p.version), "version {:?}: 1-64 of A-Z a-z 0-9 . _ -", p.version);
        ensure!(shared::alink::valid_version(&p.module), "module {:?}: 1-64 of A-Z a-z 0-9 . _ -", p.module);
        if self.protocol == Protocol::Mqtt {
            ensure!(p.bytes.len() <= MAX_STREAM_FILE, "an MQTT stream file is at most 16 MB");
        }
        if let Some(src) = &p.src_version {
            // A differential package names the one version it applies to; its batches upgrade
            // exactly the devices that report it.
            ensure!(shared::alink::valid_version(src), "source version {src:?}: 1-64 of A-Z a-z 0-9 . _ -");
            ensure!(
                self.from == [src.clone()],
                "a differential package from {src} upgrades only devices on {src}: from = [\"{src}\"] (the job \
                 says {:?})",
                self.from
            );
            ensure!(src != &p.version, "a differential package from {src} to {src} changes nothing");
        }
        if let Some(t) = self.timeout {
            ensure!((60..=1440 * 60).contains(&t.as_secs()), "TimeoutInMinutes is 1..=1440");
        }
        let tags = self.ext_data.iter().filter(|(k, _)| k != "_package_udi").count();
        ensure!(tags <= 10, "at most 10 batch tags");
        for (k, v) in &self.ext_data {
            let max = if k == "_package_udi" { 4096 } else { 1024 };
            ensure!(v.chars().count() <= max, "extData {k}: at most {max} characters");
        }
        Ok(())
    }
}

struct Job {
    id: u32,
    spec: JobSpec,
}

/// One device's part in one job (Aliyun: 待升级, 升级中, 升级成功, 升级失败).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Offered (pushed, or waiting for the device to ask); no progress yet.
    Pending,
    Downloading,
    /// Progress 100 was reported: verifying, swapping, booting the new image.
    Installing,
    Succeeded,
    Failed,
}

impl TaskState {
    pub fn done(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed)
    }
}

/// The console's record of one device's task: the job, the progress the device reported, the
/// outcome (the device's own view of an offer is `shared::ota::Task`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskRecord {
    pub job: u32,
    pub module: String,
    /// The version the device ran when the task was made.
    pub from: String,
    pub to: String,
    pub state: TaskState,
    /// Last progress step (0 before the first report).
    pub step: i32,
    pub desc: String,
    /// The device's reason for a negative step, read back from its desc.
    pub failure: Option<FailureKind>,
    /// Task made to success or failure.
    pub elapsed_ms: u64,
    /// Task made to the device's progress 100 (downloaded and verified).
    pub downloaded_ms: Option<u64>,
    /// Task made to the first block or Range GET the device asked for.
    pub first_request_ms: Option<u64>,
    pub pushes: u32,
    pub get_replies: u32,
    /// For each push that was followed by a download, the lowest offset requested after it: a
    /// download resumed after a power cut starts above 0.
    pub lowest_offsets: Vec<u32>,
    pub blocks: u32,
    /// Negative or 100 reports after the task ended (ignored by Aliyun).
    pub late_reports: u32,
    #[serde(skip)]
    created: Instant,
    /// The first progress report: the timeout runs from here.
    #[serde(skip)]
    started: Option<Instant>,
}

impl TaskRecord {
    /// Records a download of `off..` (a block request or a Range GET).
    fn requested(&mut self, off: u32, now: Instant) {
        self.blocks += 1;
        let ms = now.saturating_duration_since(self.created).as_millis() as u64;
        self.first_request_ms.get_or_insert(ms);
        if let Some(l) = self.lowest_offsets.last_mut() {
            *l = (*l).min(off);
        }
    }

    /// The task was offered again: downloads after it count as a new start.
    fn offered(&mut self) {
        if self.lowest_offsets.last() != Some(&u32::MAX) {
            self.lowest_offsets.push(u32::MAX);
        }
    }

    /// The lowest offsets of the offers that were followed by a download.
    pub fn starts(&self) -> Vec<u32> {
        self.lowest_offsets.iter().copied().filter(|&o| o != u32::MAX).collect()
    }

    fn end(&mut self, state: TaskState, now: Instant) {
        self.state = state;
        self.elapsed_ms = now.saturating_duration_since(self.created).as_millis() as u64;
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceStatus {
    pub product_key: String,
    pub device_name: String,
    pub online: bool,
    /// Version per module, as last informed.
    pub versions: BTreeMap<String, String>,
    pub connects: u32,
    pub refused: u32,
    pub last_refusal: Option<String>,
    /// Tasks by job id.
    pub tasks: BTreeMap<u32, TaskRecord>,
    /// What the device did that Aliyun does not accept (step 0, a long desc, bad block requests).
    pub violations: Vec<String>,
    /// Block requests dropped while another was being served (one-at-a-time mode).
    pub dropped_requests: u32,
    /// Error replies to block requests.
    pub refused_requests: u32,
    /// The connection the device is online on (a newer one replaces it).
    #[serde(skip)]
    conn: u64,
    /// Pending tasks go out again when the device subscribes after this connect.
    #[serde(skip)]
    repush: bool,
    /// One-at-a-time block service: busy until then.
    #[serde(skip)]
    busy_until: Option<Instant>,
}

impl DeviceStatus {
    /// The version of the default module, or of any module.
    pub fn version(&self) -> Option<&str> {
        self.versions.get("default").or_else(|| self.versions.values().next()).map(|s| s.as_str())
    }

    /// The newest task.
    pub fn task(&self) -> Option<&TaskRecord> {
        self.tasks.values().next_back()
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 100 {
            self.violations.push(what);
        }
    }
}

/// Messages through the broker, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub connects: u64,
    pub refused: u64,
    pub inform: u64,
    pub progress: u64,
    pub firmware_get: u64,
    pub download_requests: u64,
    pub pushes: u64,
    pub get_replies: u64,
    pub download_replies: u64,
    pub download_errors: u64,
    pub download_dropped: u64,
    pub download_bytes: u64,
    pub http_requests: u64,
    pub http_bytes: u64,
    pub unknown_uplinks: u64,
}

/// A snapshot for the status table and the JSON status file.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub devices: Vec<DeviceStatus>,
    pub jobs: Vec<JobStatus>,
    pub counts: Counts,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub id: u32,
    pub module: String,
    pub from: Vec<String>,
    pub to: String,
    pub protocol: Protocol,
    pub size: usize,
    pub need_push: bool,
}

/// A message the console sends a device (a push, a reply, a block): the engine queues it, its
/// broker link publishes it.
pub struct SentMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How block requests are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockService {
    /// Every valid request is answered at once.
    #[default]
    All,
    /// One request per device at a time: a request that arrives within `busy` of the last one
    /// served is dropped (a platform that does not queue).
    OneAtATime { busy: Duration },
}

/// Why an HTTP request for a package is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpRefusal {
    NotFound,
    Expired,
}

/// The engine.
pub struct Engine {
    devices: BTreeMap<DeviceId, DeviceStatus>,
    jobs: Vec<Job>,
    pub counts: Counts,
    /// Base of download URLs (`http://127.0.0.1:PORT`).
    pub http_base: String,
    /// How long a download URL stays valid.
    pub url_ttl: Duration,
    pub blocks: BlockService,
    /// Block replies carry at most this many bytes, whatever was asked (a platform that caps its
    /// blocks; the C LinkSDK takes any `bSize`).
    pub reply_cap: Option<usize>,
    /// The next this many valid block requests get `{"code":503,"msg":"system busy"}` (a platform
    /// under load), to see the device ask again.
    pub busy_replies: u32,
    /// Whether connection events come from the front door (else an inform counts as a reconnect,
    /// as when the engine sits on an outside broker).
    pub door: bool,
    /// The engine's clock at its creation, and the Unix time then (URLs carry Unix expiry).
    epoch: (Instant, u64),
    outbox: Vec<SentMessage>,
    next_msg_id: u64,
    /// Bumped on every change (the status file is rewritten when it moves).
    pub generation: u64,
}

/// JSON string contents with its escapes (what [`EscapedStr`] holds).
fn esc(s: &str) -> String {
    let q = serde_json::to_string(s).expect("a string serializes");
    q[1..q.len() - 1].to_string()
}

fn module_of(v: &Value) -> String {
    v["params"]["module"].as_str().filter(|m| !m.is_empty()).unwrap_or("default").to_string()
}

impl Engine {
    pub fn new(devices: impl IntoIterator<Item = DeviceId>, http_base: String, now: Instant) -> Engine {
        let devices = devices
            .into_iter()
            .map(|(pk, dn)| {
                let s = DeviceStatus { product_key: pk.clone(), device_name: dn.clone(), ..Default::default() };
                ((pk, dn), s)
            })
            .collect();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Engine {
            devices,
            jobs: Vec::new(),
            counts: Counts::default(),
            http_base,
            url_ttl: Duration::from_secs(24 * 3600),
            blocks: BlockService::All,
            reply_cap: None,
            busy_replies: 0,
            door: false,
            epoch: (now, unix),
            outbox: Vec::new(),
            next_msg_id: 1,
            generation: 0,
        }
    }

    /// Unix seconds at `now` of the engine's clock.
    pub fn unix_at(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    pub fn take_outbox(&mut self) -> Vec<SentMessage> {
        std::mem::take(&mut self.outbox)
    }

    pub fn status(&self) -> Status {
        Status {
            devices: self.devices.values().cloned().collect(),
            jobs: self
                .jobs
                .iter()
                .map(|j| JobStatus {
                    id: j.id,
                    module: j.spec.package.module.clone(),
                    from: j.spec.from.clone(),
                    to: j.spec.package.version.clone(),
                    protocol: j.spec.protocol,
                    size: j.spec.package.bytes.len(),
                    need_push: j.spec.need_push,
                })
                .collect(),
            counts: self.counts.clone(),
        }
    }

    pub fn device(&self, id: &DeviceId) -> Option<&DeviceStatus> {
        self.devices.get(id)
    }

    /// A device's connection `conn` opened or closed (the front door calls this). A newer
    /// connection of the same device replaces an older one, as on Aliyun.
    pub fn online(&mut self, id: &DeviceId, up: bool, conn: u64) {
        self.generation += 1;
        let Some(d) = self.devices.get_mut(id) else { return };
        if up {
            d.online = true;
            d.conn = conn;
            d.connects += 1;
            d.repush = true;
            self.counts.connects += 1;
        } else if d.conn == conn {
            d.online = false;
        }
    }

    /// The device subscribed to its upgrade topic (itself, or the server for `_ss=1` clients):
    /// the first time after a connect, its pending task goes out again.
    pub fn subscribed(&mut self, id: &DeviceId, now: Instant) {
        let Some(d) = self.devices.get_mut(id) else { return };
        if std::mem::take(&mut d.repush) {
            self.offer_all(id, now, true);
        }
    }

    /// A CONNECT was refused.
    pub fn refused(&mut self, id: Option<&DeviceId>, why: String) {
        self.generation += 1;
        self.counts.refused += 1;
        if let Some(d) = id.and_then(|id| self.devices.get_mut(id)) {
            d.refused += 1;
            d.last_refusal = Some(why);
        }
    }

    /// Creates a job (refused as the Aliyun API would) and pushes it to the online devices it
    /// matches.
    pub fn add_job(&mut self, spec: JobSpec, now: Instant) -> Result<u32> {
        spec.check()?;
        let id = self.jobs.last().map_or(1, |j| j.id + 1);
        self.jobs.push(Job { id, spec });
        self.generation += 1;
        // A task for every device it matches now (by its last informed version); the online
        // ones get the push.
        let ids: Vec<DeviceId> = self.devices.keys().cloned().collect();
        for dev in ids {
            self.offer_all(&dev, now, false);
        }
        Ok(id)
    }

    /// The bytes a job ships (for the HTTP server).
    pub fn job_file(&self, job: u32) -> Option<(String, Arc<Vec<u8>>)> {
        self.jobs.iter().find(|j| j.id == job).map(|j| (j.spec.package.file.clone(), j.spec.package.bytes.clone()))
    }

    /// Fails tasks whose timeout (from their first progress report) passed.
    pub fn tick(&mut self, now: Instant) {
        for j in &self.jobs {
            let Some(timeout) = j.spec.timeout else { continue };
            for d in self.devices.values_mut() {
                if let Some(t) = d.tasks.get_mut(&j.id) {
                    if !t.state.done() && t.started.is_some_and(|s| now.saturating_duration_since(s) > timeout) {
                        t.desc = format!("timed out after {} s", timeout.as_secs());
                        t.end(TaskState::Failed, now);
                        self.generation += 1;
                    }
                }
            }
        }
    }

    /// Handles one uplink from a device.
    pub fn uplink(&mut self, topic: &str, payload: &[u8], now: Instant) {
        self.generation += 1;
        let parts: Vec<&str> = topic.split('/').collect();
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let dev = |pk: &str, dn: &str| (pk.to_string(), dn.to_string());
        if !self.door {
            // On an outside broker the engine learns that a device is online from what it says.
            if let (Some(pk), Some(dn)) = (parts.get(parts.len().wrapping_sub(2)), parts.last()) {
                let id = if parts.get(1) == Some(&"sys") { dev(parts[2], parts[3]) } else { dev(pk, dn) };
                if let Some(d) = self.devices.get_mut(&id) {
                    d.online = true;
                }
            }
        }
        match parts.as_slice() {
            ["", "ota", "device", "inform", pk, dn] => self.on_inform(&dev(pk, dn), &v, now),
            ["", "ota", "device", "progress", pk, dn] => self.on_progress(&dev(pk, dn), &v, now),
            ["", "sys", pk, dn, "thing", "ota", "firmware", "get"] => self.on_firmware_get(&dev(pk, dn), &v, now),
            ["", "sys", pk, dn, "thing", "file", "download"] => self.on_download(&dev(pk, dn), &v, now),
            _ => self.counts.unknown_uplinks += 1,
        }
    }

    fn on_inform(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.inform += 1;
        let Some(version) = v["params"]["version"].as_str() else { return };
        let module = module_of(v);
        let door = self.door;
        let Some(d) = self.devices.get_mut(id) else { return };
        d.versions.insert(module.clone(), version.to_string());
        for t in d.tasks.values_mut().filter(|t| t.module == module && !t.state.done()) {
            if t.to == version {
                t.end(TaskState::Succeeded, now);
            } else if t.from != version {
                t.desc = format!("the device reported version {version}, neither {} nor {}", t.from, t.to);
                t.end(TaskState::Failed, now);
            }
        }
        // Without a front door an inform is how the engine learns the device (re)connected.
        self.offer_all(id, now, !door);
    }

    /// Offers the device its task for each module: a new one for a job that now matches it,
    /// pushed; with `again`, also the tasks already offered and not done (after a reconnect).
    fn offer_all(&mut self, id: &DeviceId, now: Instant, again: bool) {
        let Some(d) = self.devices.get(id) else { return };
        let (modules, online): (Vec<String>, bool) = (d.versions.keys().cloned().collect(), d.online || !self.door);
        for m in modules {
            if let Some((job, new)) = self.task_for(id, &m, now) {
                let push = self.jobs.iter().find(|j| j.id == job).is_some_and(|j| j.spec.need_push);
                if push && online && (new || again) {
                    self.send_offer(id, job, None, now);
                }
            }
        }
    }

    /// The job whose task the device has for `module`: the one not done, else the newest job
    /// that matches its version (a new task, `true`).
    fn task_for(&mut self, id: &DeviceId, module: &str, now: Instant) -> Option<(u32, bool)> {
        let d = self.devices.get_mut(id)?;
        if let Some(t) = d.tasks.values().find(|t| !t.state.done() && t.module == module) {
            return Some((t.job, false));
        }
        let v = d.versions.get(module)?.clone();
        for j in self.jobs.iter().rev() {
            let p = &j.spec.package;
            if p.module != module || d.tasks.contains_key(&j.id) {
                continue;
            }
            if j.spec.devices.as_ref().is_some_and(|names| !names.contains(&id.1)) {
                continue;
            }
            if v == p.version || !(j.spec.from.is_empty() || j.spec.from.contains(&v)) {
                continue;
            }
            let t = TaskRecord {
                job: j.id,
                module: p.module.clone(),
                from: v.clone(),
                to: p.version.clone(),
                state: TaskState::Pending,
                step: 0,
                desc: String::new(),
                failure: None,
                elapsed_ms: 0,
                downloaded_ms: None,
                first_request_ms: None,
                pushes: 0,
                get_replies: 0,
                lowest_offsets: Vec::new(),
                blocks: 0,
                late_reports: 0,
                created: now,
                started: None,
            };
            d.tasks.insert(j.id, t);
            return Some((j.id, true));
        }
        None
    }

    /// Calls `f` with the `data` of a push or get_reply for `job` (strings escaped as on the
    /// wire).
    fn with_offer<R>(&self, id: &DeviceId, job: u32, now: Instant, f: impl FnOnce(&Offer<'_>) -> R) -> R {
        let j = self.jobs.iter().find(|j| j.id == job).expect("task of a known job");
        let (s, p) = (&j.spec, &j.spec.package);
        let quirk = |q: &Quirk| s.quirks.contains(q);
        let sign_method = s.quirks.iter().find_map(|q| match q {
            Quirk::SignMethod(m) => Some(esc(m)),
            _ => None,
        });
        let version = s.quirks.iter().find_map(|q| match q {
            Quirk::Version(v) => Some(esc(v)),
            _ => None,
        });
        let (method, sign) = match s.digest {
            DigestKind::Md5 => ("Md5", &p.md5),
            DigestKind::Sha256 => ("SHA256", &p.sha256),
        };
        let url = match s.protocol {
            Protocol::Https => {
                let expires = self.unix_at(now) + self.url_ttl.as_secs();
                Some(esc(&format!("{}/ota/{job}/{}?Expires={expires}&device={}", self.http_base, p.file, id.1)))
            }
            Protocol::Mqtt => None,
        };
        let module = (p.module != "default").then(|| esc(&p.module));
        let ext: Vec<(String, String)> = s.ext_data.iter().map(|(k, v)| (esc(k), esc(v))).collect();
        let keep = |f: &'static str| !quirk(&Quirk::Omit(f));
        let e = EscapedStr;
        let mut o = Offer {
            size: keep("size").then_some(p.bytes.len() as u32),
            version: keep("version").then(|| e(version.as_deref().unwrap_or(&p.version))),
            is_diff: (p.src_version.is_some() || quirk(&Quirk::Diff)).then_some(1),
            url: url.as_deref().filter(|_| keep("url")).map(e),
            md5: (s.digest == DigestKind::Md5 && keep("md5") && keep("sign")).then(|| e(&p.md5)),
            sign: keep("sign").then(|| e(sign)),
            sign_method: keep("signMethod").then(|| e(sign_method.as_deref().unwrap_or(method))),
            module: module.as_deref().map(e),
            ..Default::default()
        };
        if s.protocol == Protocol::Mqtt {
            o.d_protocol = Some(e("mqtt"));
            o.stream_id = keep("streamId").then_some(stream_id(job));
            o.stream_file_id = Some(1);
        }
        if let Some(n) = s.quirks.iter().find_map(|q| if let Quirk::Files(n) = q { Some(*n) } else { None }) {
            let file = OfferFile {
                file_name: Some(e(&p.file)),
                file_url: o.url,
                file_size: o.size,
                file_sign: o.sign,
                file_md5: o.md5,
            };
            o.files = Some(OfferFiles { first: file, count: n });
        }
        if !ext.is_empty() {
            let mut x = ExtData::default();
            for (k, v) in &ext {
                let _ = x.0.push((e(k), e(v)));
            }
            o.ext_data = Some(x);
        }
        f(&o)
    }

    /// Sends the task of `job`: a push, or the reply to the `firmware/get` with id `reply_to`.
    fn send_offer(&mut self, id: &DeviceId, job: u32, reply_to: Option<&str>, now: Instant) {
        let (pk, dn) = id;
        let mut out = vec![0u8; MAX_PAYLOAD];
        let msg_id = self.next_msg_id;
        // JobSpec::check keeps every push under Aliyun's 256 KB.
        let n = self.with_offer(id, job, now, |o| match reply_to {
            None => shared::alink::emit_push(&mut out, msg_id, o),
            Some(req) => shared::alink::emit_get_reply(&mut out, req, o),
        });
        let n = n.expect("a push fits 256 KB");
        out.truncate(n);
        let topic = match reply_to {
            None => {
                self.counts.pushes += 1;
                self.next_msg_id += 1;
                format!("/ota/device/upgrade/{pk}/{dn}")
            }
            Some(_) => {
                self.counts.get_replies += 1;
                format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply")
            }
        };
        if let Some(t) = self.devices.get_mut(id).and_then(|d| d.tasks.get_mut(&job)) {
            t.offered();
            if reply_to.is_some() {
                t.get_replies += 1;
            } else {
                t.pushes += 1;
            }
        }
        self.outbox.push(SentMessage { topic, payload: out });
    }

    fn on_progress(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.progress += 1;
        let p = &v["params"];
        let step = match &p["step"] {
            Value::String(s) => s.parse::<i32>().ok(),
            Value::Number(n) => n.as_i64().map(|n| n as i32),
            _ => None,
        };
        let module = module_of(v);
        let Some(d) = self.devices.get_mut(id) else { return };
        let Some(step) = step else {
            d.violation(format!("progress without a step: {}", p["step"]));
            return;
        };
        let desc = p["desc"].as_str().unwrap_or("").to_string();
        if desc.len() > 128 {
            d.violation(format!("desc of {} bytes (Aliyun takes 128)", desc.len()));
        }
        if !(step == 0 || (1..=100).contains(&step) || (-4..=-1).contains(&step)) {
            d.violation(format!("step {step} is not an Aliyun step"));
            return;
        }
        let Some(t) = d.tasks.values_mut().rev().find(|t| t.module == module && !t.state.done()) else {
            if let Some(t) = d.tasks.values_mut().rev().find(|t| t.module == module) {
                t.late_reports += 1;
            }
            return;
        };
        t.step = step;
        t.desc = desc;
        t.started.get_or_insert(now);
        match step {
            // Aliyun ends a task on a 0 as on a negative step ("always being pushed" FAQ).
            0 => {
                t.end(TaskState::Failed, now);
                d.violation("progress 0 (it ends the task as failed)".into());
            }
            s if s < 0 => {
                t.failure = FailureKind::of_desc(&t.desc);
                t.end(TaskState::Failed, now);
            }
            100 => {
                t.state = TaskState::Installing;
                t.downloaded_ms = Some(now.saturating_duration_since(t.created).as_millis() as u64);
            }
            _ => t.state = TaskState::Downloading,
        }
    }

    fn on_firmware_get(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.firmware_get += 1;
        let req = match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let module = module_of(v);
        if !self.devices.contains_key(id) {
            return;
        }
        match self.task_for(id, &module, now) {
            Some((job, _)) => self.send_offer(id, job, Some(&req), now),
            None => {
                self.counts.get_replies += 1;
                let (pk, dn) = id;
                let mut out = [0u8; 64];
                let n = shared::alink::emit_get_reply(&mut out, &req, &Offer::default()).expect("fits");
                let topic = format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply");
                self.outbox.push(SentMessage { topic, payload: out[..n].to_vec() });
            }
        }
    }

    fn on_download(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.download_requests += 1;
        let p = &v["params"];
        let req = v["id"].as_str().map_or_else(|| v["id"].to_string(), |s| s.to_string());
        let token = p["fileToken"].as_str();
        let (pk, dn) = id;
        let topic = format!("/sys/{pk}/{dn}/thing/file/download_reply");
        let Some(d) = self.devices.get_mut(id) else { return };
        if let BlockService::OneAtATime { busy } = self.blocks {
            if d.busy_until.is_some_and(|t| now < t) {
                d.dropped_requests += 1;
                self.counts.download_dropped += 1;
                return;
            }
            d.busy_until = Some(now + busy);
        }
        let stream = p["fileInfo"]["streamId"].as_u64();
        let file_id = p["fileInfo"]["fileId"].as_u64();
        let (off, size) = (p["fileBlock"]["offset"].as_u64(), p["fileBlock"]["size"].as_u64());
        let job = self.jobs.iter().find(|j| Some(stream_id(j.id)) == stream && j.spec.protocol == Protocol::Mqtt);
        let refusal: Option<(u16, String)> = match (job, off, size) {
            (None, ..) => Some((404, format!("stream {} not found", p["fileInfo"]["streamId"]))),
            (Some(_), ..) if file_id != Some(1) => {
                Some((404, format!("file {} not found in the stream", p["fileInfo"]["fileId"])))
            }
            (Some(j), ..) if d.tasks.get(&j.id).is_none_or(|t| t.state.done()) => {
                Some((403, "the device has no OTA task for this stream".into()))
            }
            (Some(_), None, _) | (Some(_), _, None) => Some((400, "fileBlock needs offset and size".into())),
            (Some(j), Some(off), Some(size)) => {
                let len = j.spec.package.bytes.len() as u64;
                if off >= len {
                    Some((400, format!("offset {off} is past the end of the file ({len} bytes)")))
                } else if !(1..=131_072).contains(&size) {
                    Some((400, format!("block size {size} is outside 256..131072")))
                } else if size < 256 && off + size < len {
                    Some((400, format!("block size {size} below 256 (only the last block may be shorter)")))
                } else {
                    None
                }
            }
        };
        let mut out = vec![0u8; 131_072 + 512];
        if refusal.is_some() {
            d.refused_requests += 1;
            d.violation(format!("block request refused: {}", refusal.as_ref().map_or("", |r| r.1.as_str())));
        }
        let refusal = refusal.or_else(|| {
            (self.busy_replies > 0).then(|| {
                self.busy_replies -= 1;
                (503, "system busy, try again later".to_string())
            })
        });
        if let Some((code, msg)) = refusal {
            self.counts.download_errors += 1;
            let n = shared::alink::emit_download_error(&mut out, &req, code, &msg).expect("fits");
            out.truncate(n);
            self.outbox.push(SentMessage { topic, payload: out });
            return;
        }
        let (j, off, size) = (job.expect("checked"), off.unwrap_or(0) as usize, size.unwrap_or(0) as usize);
        let bytes = &j.spec.package.bytes;
        let size = self.reply_cap.map_or(size, |c| size.min(c));
        let data = &bytes[off..(off + size).min(bytes.len())];
        let n = shared::alink::emit_download_reply(&mut out, &req, token, bytes.len() as u32, off as u32, data)
            .expect("a block reply fits");
        out.truncate(n);
        self.counts.download_replies += 1;
        self.counts.download_bytes += data.len() as u64;
        if let Some(t) = d.tasks.get_mut(&j.id) {
            t.requested(off as u32, now);
        }
        self.outbox.push(SentMessage { topic, payload: out });
    }

    /// The package behind a download URL `/ota/{job}/{file}` with its query, if it is valid at
    /// `now` (the HTTP server and the in-memory tests call this); records the request.
    pub fn http_get(
        &mut self,
        path: &str,
        query: &str,
        first: u64,
        len: u64,
        now: Instant,
    ) -> Result<Arc<Vec<u8>>, HttpRefusal> {
        let param =
            |k: &str| query.split('&').filter_map(|kv| kv.split_once('=')).find(|(a, _)| *a == k).map(|(_, v)| v);
        let (job, file) = path.strip_prefix("/ota/").and_then(|p| p.split_once('/')).ok_or(HttpRefusal::NotFound)?;
        let job: u32 = job.parse().map_err(|_| HttpRefusal::NotFound)?;
        let (name, bytes) = self.job_file(job).ok_or(HttpRefusal::NotFound)?;
        if name != file {
            return Err(HttpRefusal::NotFound);
        }
        if param("Expires").and_then(|e| e.parse::<u64>().ok()).is_none_or(|e| e <= self.unix_at(now)) {
            return Err(HttpRefusal::Expired);
        }
        self.generation += 1;
        self.counts.http_requests += 1;
        self.counts.http_bytes += len.min(bytes.len() as u64 - first.min(bytes.len() as u64));
        let device = param("device").and_then(|d| self.devices.keys().find(|k| k.1 == d).cloned());
        if let Some(t) = device.and_then(|id| self.devices.get_mut(&id)).and_then(|d| d.tasks.get_mut(&job)) {
            t.requested(first as u32, now);
        }
        Ok(bytes)
    }
}

/// The `streamId` of a job's MQTT stream.
pub fn stream_id(job: u32) -> u64 {
    1_000_000 + job as u64
}
