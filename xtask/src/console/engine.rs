//! The OTA job engine: Aliyun's OTA service as the device sees it over MQTT, without I/O. Uplinks
//! (topic, payload) and the clock go in; downlinks come out of `take_outbox`. The console's broker
//! link and HTTP server carry them.
//!
//! A job ships one package (module + destination version) to the registered devices whose version
//! of that module is one of the job's source versions (any version when none are given). A device
//! gets the push when it informs a matching version (again after every reconnect while its task
//! runs) and the task in `firmware/get` replies. The task succeeds when the device informs the
//! destination version and fails on a negative progress step or when the job's timeout passes.

use super::auth::DeviceId;
use anyhow::{ensure, Context, Result};
use md5::Md5;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A firmware package: the signed image of a release folder.
#[derive(Clone, Debug)]
pub struct Package {
    pub file: String,
    pub module: String,
    pub version: String,
    pub bytes: Arc<Vec<u8>>,
    pub md5: String,
    pub sha256: String,
}

#[derive(Deserialize)]
struct ManifestView {
    module: String,
    version: String,
    file: String,
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

    pub fn new(file: &str, module: &str, version: &str, bytes: Vec<u8>) -> Package {
        Package {
            file: file.into(),
            module: module.into(),
            version: version.into(),
            md5: hex::encode(Md5::digest(&bytes)),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: Arc::new(bytes),
        }
    }

    /// The same package with one byte flipped and its digests recomputed, as if the file had been
    /// altered before the upload: only the image signature can tell.
    pub fn tampered(&self, offset: usize) -> Package {
        let mut b = self.bytes.to_vec();
        b[offset] ^= 0x01;
        Package::new(&self.file, &self.module, &self.version, b)
    }
}

/// How the device downloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// What a job is made of.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub package: Package,
    /// Source versions; empty = any version other than the destination.
    pub from: Vec<String>,
    pub protocol: Protocol,
    pub digest: DigestKind,
    pub timeout: Duration,
}

struct Job {
    id: u32,
    spec: JobSpec,
}

/// One device's part in one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pushed,
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

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub job: u32,
    pub module: String,
    pub to: String,
    pub state: TaskState,
    /// Last progress step (0 before the first report).
    pub step: i32,
    pub desc: String,
    /// Push to success or failure.
    pub elapsed_ms: u64,
    pub pushes: u32,
    /// For each push that was followed by a download, the lowest offset requested after it: a
    /// download resumed after a power cut starts above 0.
    pub lowest_offsets: Vec<u32>,
    pub blocks: u32,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Task {
    /// Records a download of `off..` (a block request or a Range GET).
    fn requested(&mut self, off: u32) {
        self.blocks += 1;
        if let Some(l) = self.lowest_offsets.last_mut() {
            *l = (*l).min(off);
        }
    }

    /// A push went out: downloads after it count as a new start.
    fn pushed(&mut self) {
        self.pushes += 1;
        if self.lowest_offsets.last() != Some(&u32::MAX) {
            self.lowest_offsets.push(u32::MAX);
        }
    }

    /// The lowest offsets of the pushes that were followed by a download.
    pub fn starts(&self) -> Vec<u32> {
        self.lowest_offsets.iter().copied().filter(|&o| o != u32::MAX).collect()
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
    pub tasks: BTreeMap<u32, Task>,
}

impl DeviceStatus {
    /// The version of the default module, or of any module.
    pub fn version(&self) -> Option<&str> {
        self.versions.get("default").or_else(|| self.versions.values().next()).map(|s| s.as_str())
    }

    /// The newest task.
    pub fn task(&self) -> Option<&Task> {
        self.tasks.values().next_back()
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
}

pub struct Downlink {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The engine.
pub struct Engine {
    devices: BTreeMap<DeviceId, DeviceStatus>,
    jobs: Vec<Job>,
    pub counts: Counts,
    /// Base of download URLs (`http://127.0.0.1:PORT`).
    pub http_base: String,
    /// How long a download URL stays valid (Aliyun's are signed and expire).
    pub url_ttl: Duration,
    outbox: Vec<Downlink>,
    next_msg_id: u64,
    /// Bumped on every change (the status file is rewritten when it moves).
    pub generation: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Engine {
    pub fn new(devices: impl IntoIterator<Item = DeviceId>, http_base: String) -> Engine {
        let devices = devices
            .into_iter()
            .map(|(pk, dn)| {
                let s = DeviceStatus { product_key: pk.clone(), device_name: dn.clone(), ..Default::default() };
                ((pk, dn), s)
            })
            .collect();
        Engine {
            devices,
            jobs: Vec::new(),
            counts: Counts::default(),
            http_base,
            url_ttl: Duration::from_secs(3600),
            outbox: Vec::new(),
            next_msg_id: 1,
            generation: 0,
        }
    }

    pub fn take_outbox(&mut self) -> Vec<Downlink> {
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
                })
                .collect(),
            counts: self.counts.clone(),
        }
    }

    pub fn device(&self, id: &DeviceId) -> Option<&DeviceStatus> {
        self.devices.get(id)
    }

    /// A device's connection opened or closed (the front door calls this).
    pub fn online(&mut self, id: &DeviceId, up: bool) {
        self.generation += 1;
        if let Some(d) = self.devices.get_mut(id) {
            d.online = up;
            if up {
                d.connects += 1;
                self.counts.connects += 1;
            }
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

    /// Creates a job and pushes it to the online devices it matches.
    pub fn add_job(&mut self, spec: JobSpec, now: Instant) -> u32 {
        let id = self.jobs.last().map_or(1, |j| j.id + 1);
        self.jobs.push(Job { id, spec });
        self.generation += 1;
        let ids: Vec<DeviceId> = self.devices.iter().filter(|d| d.1.online).map(|d| d.0.clone()).collect();
        for dev in ids {
            self.offer(&dev, now);
        }
        id
    }

    /// The bytes a job ships (for the HTTP server).
    pub fn job_file(&self, job: u32) -> Option<(String, Arc<Vec<u8>>)> {
        self.jobs.iter().find(|j| j.id == job).map(|j| (j.spec.package.file.clone(), j.spec.package.bytes.clone()))
    }

    /// Fails tasks whose job timed out.
    pub fn tick(&mut self, now: Instant) {
        for j in &self.jobs {
            for d in self.devices.values_mut() {
                if let Some(t) = d.tasks.get_mut(&j.id) {
                    if !t.state.done() && t.started.is_some_and(|s| now.duration_since(s) > j.spec.timeout) {
                        t.state = TaskState::Failed;
                        t.desc = format!("timed out after {} s", j.spec.timeout.as_secs());
                        t.elapsed_ms = j.spec.timeout.as_millis() as u64;
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
        match parts.as_slice() {
            ["", "ota", "device", "inform", pk, dn] => self.on_inform(&dev(pk, dn), &v, now),
            ["", "ota", "device", "progress", pk, dn] => self.on_progress(&dev(pk, dn), &v, now),
            ["", "sys", pk, dn, "thing", "ota", "firmware", "get"] => self.on_firmware_get(&dev(pk, dn), &v, now),
            ["", "sys", pk, dn, "thing", "file", "download"] => self.on_download(&dev(pk, dn), &v),
            _ => self.counts.unknown_uplinks += 1,
        }
    }

    fn module_of(v: &Value) -> String {
        v["params"]["module"].as_str().filter(|m| !m.is_empty()).unwrap_or("default").to_string()
    }

    fn on_inform(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.inform += 1;
        let Some(version) = v["params"]["version"].as_str() else { return };
        let module = Self::module_of(v);
        let Some(d) = self.devices.get_mut(id) else { return };
        d.versions.insert(module.clone(), version.to_string());
        for t in d.tasks.values_mut().filter(|t| t.module == module && !t.state.done()) {
            if t.to == version {
                t.state = TaskState::Succeeded;
                t.elapsed_ms = t.started.map_or(0, |s| now.duration_since(s).as_millis() as u64);
            }
        }
        self.offer(id, now);
    }

    /// Pushes the device's running task again (it reconnected), or a new task that matches it.
    fn offer(&mut self, id: &DeviceId, now: Instant) {
        if let Some(job) = self.task_for(id, None, now) {
            self.push(id, job, None);
        }
    }

    /// The job whose task the device should run for `module` (any when `None`): the one in
    /// progress, else the newest job that matches its version (starting the task).
    fn task_for(&mut self, id: &DeviceId, module: Option<&str>, now: Instant) -> Option<u32> {
        let d = self.devices.get_mut(id)?;
        let running = d.tasks.values().find(|t| !t.state.done() && module.is_none_or(|m| t.module == m));
        if let Some(t) = running {
            return Some(t.job);
        }
        for j in self.jobs.iter().rev() {
            let p = &j.spec.package;
            if module.is_some_and(|m| m != p.module) || d.tasks.contains_key(&j.id) {
                continue;
            }
            let Some(v) = d.versions.get(&p.module) else { continue };
            if *v == p.version || !(j.spec.from.is_empty() || j.spec.from.contains(v)) {
                continue;
            }
            let t = Task {
                job: j.id,
                module: p.module.clone(),
                to: p.version.clone(),
                state: TaskState::Pushed,
                step: 0,
                desc: String::new(),
                elapsed_ms: 0,
                pushes: 0,
                lowest_offsets: Vec::new(),
                blocks: 0,
                started: Some(now),
            };
            d.tasks.insert(j.id, t);
            return Some(j.id);
        }
        None
    }

    /// The `data` of a push or get_reply for `job`.
    fn task_json(&self, id: &DeviceId, job: u32) -> Value {
        let j = self.jobs.iter().find(|j| j.id == job).expect("task of a known job");
        let p = &j.spec.package;
        let (method, sign) = match j.spec.digest {
            DigestKind::Md5 => ("Md5", &p.md5),
            DigestKind::Sha256 => ("SHA256", &p.sha256),
        };
        let mut data = serde_json::json!({
            "size": p.bytes.len(),
            "version": p.version,
            "signMethod": method,
            "sign": sign,
            "md5": p.md5,
            "isDiff": 0,
        });
        if p.module != "default" {
            data["module"] = p.module.clone().into();
        }
        match j.spec.protocol {
            Protocol::Mqtt => {
                data["dProtocol"] = "mqtt".into();
                data["streamId"] = (1_000_000 + job as u64).into();
                data["streamFileId"] = 1.into();
            }
            Protocol::Https => {
                let expires = unix_now() + self.url_ttl.as_secs();
                data["url"] =
                    format!("{}/ota/{job}/{}?Expires={expires}&device={}", self.http_base, p.file, id.1).into();
            }
        }
        data
    }

    fn push(&mut self, id: &DeviceId, job: u32, reply_to: Option<String>) {
        let data = self.task_json(id, job);
        let (pk, dn) = id;
        let (topic, body) = match reply_to {
            None => {
                self.counts.pushes += 1;
                let msg_id = self.next_msg_id;
                self.next_msg_id += 1;
                let body = serde_json::json!({"code": "1000", "data": data, "id": msg_id, "message": "success"});
                (format!("/ota/device/upgrade/{pk}/{dn}"), body)
            }
            Some(req) => {
                self.counts.get_replies += 1;
                let body = serde_json::json!({"id": req, "code": 200, "data": data});
                (format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply"), body)
            }
        };
        if let Some(t) = self.devices.get_mut(id).and_then(|d| d.tasks.get_mut(&job)) {
            t.pushed();
        }
        self.outbox.push(Downlink { topic, payload: body.to_string().into_bytes() });
    }

    fn on_progress(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.progress += 1;
        let p = &v["params"];
        let step = match &p["step"] {
            Value::String(s) => s.parse::<i32>().ok(),
            Value::Number(n) => n.as_i64().map(|n| n as i32),
            _ => None,
        };
        let Some(step) = step else { return };
        let module = Self::module_of(v);
        let Some(d) = self.devices.get_mut(id) else { return };
        let Some(t) = d.tasks.values_mut().rev().find(|t| t.module == module && !t.state.done()) else { return };
        t.step = step;
        t.desc = p["desc"].as_str().unwrap_or("").to_string();
        t.state = match step {
            s if s < 0 => TaskState::Failed,
            100 => TaskState::Installing,
            _ => TaskState::Downloading,
        };
        if t.state.done() {
            t.elapsed_ms = t.started.map_or(0, |s| now.duration_since(s).as_millis() as u64);
        }
    }

    fn on_firmware_get(&mut self, id: &DeviceId, v: &Value, now: Instant) {
        self.counts.firmware_get += 1;
        let req = match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let module = Self::module_of(v);
        if !self.devices.contains_key(id) {
            return;
        }
        match self.task_for(id, Some(&module), now) {
            Some(job) => self.push(id, job, Some(req)),
            None => {
                self.counts.get_replies += 1;
                let (pk, dn) = id;
                let body = serde_json::json!({"id": req, "code": 200, "data": {}});
                let topic = format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply");
                self.outbox.push(Downlink { topic, payload: body.to_string().into_bytes() });
            }
        }
    }

    fn on_download(&mut self, id: &DeviceId, v: &Value) {
        self.counts.download_requests += 1;
        let p = &v["params"];
        let stream = p["fileInfo"]["streamId"].as_u64().unwrap_or(0);
        let (Some(off), Some(size)) = (p["fileBlock"]["offset"].as_u64(), p["fileBlock"]["size"].as_u64()) else {
            return;
        };
        let Some(job) = self.jobs.iter().find(|j| 1_000_000 + j.id as u64 == stream) else { return };
        let bytes = job.spec.package.bytes.clone();
        let job_id = job.id;
        let req = v["id"].as_str().map_or_else(|| v["id"].to_string(), |s| s.to_string());
        let token = p["fileToken"].as_str();
        if off as usize >= bytes.len() || !(1..=131_072).contains(&size) {
            return; // Aliyun answers with an error code; the device times out and retries
        }
        let end = (off as usize + size as usize).min(bytes.len());
        let data = &bytes[off as usize..end];
        let mut out = vec![0u8; data.len() + 512];
        let Ok(n) = shared::alink::emit_download_reply(&mut out, &req, token, bytes.len() as u32, off as u32, data)
        else {
            return;
        };
        out.truncate(n);
        self.counts.download_replies += 1;
        self.counts.download_bytes += data.len() as u64;
        if let Some(t) = self.devices.get_mut(id).and_then(|d| d.tasks.get_mut(&job_id)) {
            t.requested(off as u32);
        }
        let (pk, dn) = id;
        self.outbox.push(Downlink { topic: format!("/sys/{pk}/{dn}/thing/file/download_reply"), payload: out });
    }

    /// An HTTP range request for a job's file (the HTTP server calls this).
    pub fn http_served(&mut self, id: Option<&DeviceId>, job: u32, first: u64, len: u64) {
        self.generation += 1;
        self.counts.http_requests += 1;
        self.counts.http_bytes += len;
        if let Some(t) = id.and_then(|id| self.devices.get_mut(id)).and_then(|d| d.tasks.get_mut(&job)) {
            t.requested(first as u32);
        }
    }

    /// The device a URL was made for (its `device=` parameter) in the product of `job`.
    pub fn device_named(&self, name: &str) -> Option<DeviceId> {
        self.devices.keys().find(|k| k.1 == name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "a1B2c3D4e5F";

    fn dev(n: &str) -> DeviceId {
        (PK.to_string(), n.to_string())
    }

    fn engine() -> Engine {
        Engine::new([dev("d1"), dev("d2")], "http://127.0.0.1:9".into())
    }

    fn job(version: &str, from: &[&str], protocol: Protocol) -> JobSpec {
        JobSpec {
            package: Package::new(&format!("firmware-{version}.bin"), "default", version, vec![7u8; 10_000]),
            from: from.iter().map(|s| s.to_string()).collect(),
            protocol,
            digest: DigestKind::Md5,
            timeout: Duration::from_secs(60),
        }
    }

    fn inform(e: &mut Engine, d: &str, v: &str, now: Instant) {
        e.uplink(
            &format!("/ota/device/inform/{PK}/{d}"),
            format!(r#"{{"id":"1","params":{{"version":"{v}"}}}}"#).as_bytes(),
            now,
        );
    }

    fn progress(e: &mut Engine, d: &str, step: &str, now: Instant) {
        let p = format!(r#"{{"id":"2","params":{{"step":"{step}","desc":"x"}}}}"#);
        e.uplink(&format!("/ota/device/progress/{PK}/{d}"), p.as_bytes(), now);
    }

    fn topics(out: &[Downlink]) -> Vec<&str> {
        out.iter().map(|d| d.topic.as_str()).collect()
    }

    #[test]
    fn a_job_is_pushed_to_matching_online_devices_and_succeeds_on_the_destination_version() {
        let t0 = Instant::now();
        let mut e = engine();
        e.online(&dev("d1"), true);
        inform(&mut e, "d1", "1.3", t0);
        e.online(&dev("d2"), true);
        inform(&mut e, "d2", "1.2", t0);
        assert!(e.take_outbox().is_empty());
        let j = e.add_job(job("1.4", &["1.3"], Protocol::Mqtt), t0);
        let out = e.take_outbox();
        assert_eq!(topics(&out), [format!("/ota/device/upgrade/{PK}/d1")], "d2 runs 1.2, not a source version");
        let push: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(push["code"], "1000");
        assert_eq!(push["data"]["dProtocol"], "mqtt");
        let task = shared::alink::parse_task(&out[0].payload).unwrap().unwrap();
        assert_eq!(task.version, "1.4");
        assert_eq!(task.size, 10_000);

        // A block request is answered with a frame the device's parser accepts.
        let req = format!(
            r#"{{"id":"9","params":{{"fileToken":"t","fileInfo":{{"streamId":{},"fileId":1}},"fileBlock":{{"size":4096,"offset":8192}}}}}}"#,
            push["data"]["streamId"]
        );
        e.uplink(&format!("/sys/{PK}/d1/thing/file/download"), req.as_bytes(), t0);
        let out = e.take_outbox();
        let b = shared::alink::parse_download_reply(&out[0].payload).unwrap();
        assert_eq!((b.offset, b.data.len(), b.file_length), (8192, 10_000 - 8192, 10_000));
        progress(&mut e, "d1", "50", t0);
        assert_eq!(e.device(&dev("d1")).unwrap().tasks[&j].state, TaskState::Downloading);
        progress(&mut e, "d1", "100", t0);
        inform(&mut e, "d1", "1.4", t0 + Duration::from_secs(3));
        let t = &e.device(&dev("d1")).unwrap().tasks[&j];
        assert_eq!((t.state, t.elapsed_ms, t.starts()), (TaskState::Succeeded, 3000, vec![8192]));
        assert!(e.take_outbox().is_empty(), "no push once the device runs the destination");
    }

    #[test]
    fn a_reconnect_re_pushes_a_running_task_and_firmware_get_returns_it() {
        let t0 = Instant::now();
        let mut e = engine();
        let j = e.add_job(job("1.4", &[], Protocol::Https), t0);
        e.online(&dev("d1"), true);
        inform(&mut e, "d1", "1.3", t0);
        let out = e.take_outbox();
        let push: Value = serde_json::from_slice(&out[0].payload).unwrap();
        let url = push["data"]["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("http://127.0.0.1:9/ota/{j}/firmware-1.4.bin?Expires=")), "{url}");
        progress(&mut e, "d1", "30", t0);
        inform(&mut e, "d1", "1.3", t0);
        e.uplink(&format!("/sys/{PK}/d1/thing/ota/firmware/get"), br#"{"id":"77","params":{}}"#, t0);
        let out = e.take_outbox();
        assert_eq!(
            topics(&out),
            [format!("/ota/device/upgrade/{PK}/d1"), format!("/sys/{PK}/d1/thing/ota/firmware/get_reply")]
        );
        let reply: Value = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!((reply["id"].as_str(), reply["code"].as_i64()), (Some("77"), Some(200)));
        assert_eq!(reply["data"]["version"], "1.4");
        assert_eq!(e.device(&dev("d1")).unwrap().tasks[&j].pushes, 3);
    }

    #[test]
    fn a_negative_step_fails_the_task_for_good_and_a_timeout_fails_it_too() {
        let t0 = Instant::now();
        let mut e = engine();
        let j = e.add_job(job("1.5", &["1.4"], Protocol::Mqtt), t0);
        for d in ["d1", "d2"] {
            e.online(&dev(d), true);
            inform(&mut e, d, "1.4", t0);
        }
        progress(&mut e, "d1", "-3", t0);
        inform(&mut e, "d1", "1.4", t0);
        let t = &e.device(&dev("d1")).unwrap().tasks[&j];
        assert_eq!((t.state, t.step, t.pushes), (TaskState::Failed, -3, 1), "no re-push after a failure");
        e.tick(t0 + Duration::from_secs(61));
        let t = &e.device(&dev("d2")).unwrap().tasks[&j];
        assert_eq!(t.state, TaskState::Failed);
        assert!(t.desc.contains("timed out"), "{}", t.desc);
        // firmware/get with nothing to do: an empty data object.
        e.take_outbox();
        e.uplink(&format!("/sys/{PK}/d1/thing/ota/firmware/get"), br#"{"id":5,"params":{}}"#, t0);
        let out = e.take_outbox();
        assert_eq!(String::from_utf8_lossy(&out[0].payload), r#"{"code":200,"data":{},"id":"5"}"#);
    }

    #[test]
    fn other_modules_unknown_devices_and_garbage_change_nothing() {
        let t0 = Instant::now();
        let mut e = engine();
        e.add_job(job("1.4", &[], Protocol::Mqtt), t0);
        e.uplink(
            &format!("/ota/device/inform/{PK}/d1"),
            br#"{"id":"1","params":{"version":"1.0","module":"wifi"}}"#,
            t0,
        );
        e.uplink(&format!("/ota/device/inform/{PK}/nobody"), br#"{"id":"1","params":{"version":"1.0"}}"#, t0);
        e.uplink(&format!("/ota/device/inform/{PK}/d1"), b"\xff{not json", t0);
        e.uplink("/x/y", b"{}", t0);
        assert!(e.take_outbox().is_empty());
        assert_eq!(e.counts.unknown_uplinks, 1);
        assert_eq!(e.device(&dev("d1")).unwrap().versions["wifi"], "1.0");
    }

    #[test]
    fn a_tampered_package_keeps_its_size_and_gets_new_digests() {
        let p = Package::new("f.bin", "default", "1.5", vec![1u8; 100]);
        let t = p.tampered(50);
        assert_eq!(t.bytes.len(), 100);
        assert_ne!(t.md5, p.md5);
        assert_eq!(t.bytes.iter().zip(p.bytes.iter()).filter(|(a, b)| a != b).count(), 1);
    }
}
