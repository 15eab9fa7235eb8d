//! A scripted Aliyun console on an MQTT broker: sees a device's OTA uplinks, pushes a task,
//! answers `firmware/get` and MQTT stream block requests from an image. Used by `cargo xtask bench
//! ota` and by the host device tests against mosquitto (the local console with its own broker is
//! `console`).

use md5::{Digest as _, Md5};
use serde_json::Value;
use shared::alink::emit_download_reply;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const PK: &str = "a1B2c3D4e5F";
pub const DN: &str = "dev-001";

/// The scripted console: an MQTT client on the broker that sees the device's uplinks.
pub struct Console {
    pub client: rumqttc::Client,
    pub rx: mpsc::Receiver<(String, Vec<u8>)>,
    pub seen: Vec<(String, Value)>,
    pub image: Vec<u8>,
    md5: String,
    /// Answer block requests only below this offset.
    pub serve_below: u32,
    pub requests: Vec<u32>,
}

impl Console {
    pub fn new(port: u16, image: Vec<u8>) -> Console {
        let mut o = rumqttc::MqttOptions::new("console", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 256);
        for t in [
            "/ota/device/inform/+/+",
            "/ota/device/progress/+/+",
            "/sys/+/+/thing/file/download",
            "/sys/+/+/thing/ota/firmware/get",
        ] {
            client.subscribe(t, rumqttc::QoS::AtMostOnce).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let md5 = hex::encode(Md5::digest(&image));
        let mut c = Console { client, rx, seen: vec![], image, md5, serve_below: u32::MAX, requests: vec![] };
        std::thread::sleep(Duration::from_millis(300)); // subscriptions in place
        c.seen.clear();
        c
    }

    pub fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client.publish(topic, rumqttc::QoS::AtMostOnce, false, payload).unwrap();
    }

    pub fn task_json(&self, url: Option<&str>) -> String {
        let md5 = &self.md5;
        let size = self.image.len();
        match url {
            None => format!(
                r#"{{"size":{size},"streamId":12332,"sign":"{md5}","dProtocol":"mqtt","version":"1.4","signMethod":"Md5","streamFileId":1,"md5":"{md5}"}}"#
            ),
            Some(u) => format!(
                r#"{{"size":{size},"version":"1.4","url":"{u}","md5":"{md5}","sign":"{md5}","signMethod":"Md5"}}"#
            ),
        }
    }

    pub fn push(&self, url: Option<&str>) {
        let j = format!(r#"{{"code":"1000","data":{},"id":1695281536874,"message":"success"}}"#, self.task_json(url));
        self.publish(format!("/ota/device/upgrade/{PK}/{DN}"), j.into_bytes());
    }

    /// Handles uplinks (answering block requests and firmware/get with `task`) until `until`
    /// accepts one; returns it.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        task_url: Option<Option<&str>>,
        mut until: impl FnMut(&str, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (topic, payload) = match self.rx.recv_timeout(left) {
                Ok(m) => m,
                Err(_) => panic!("console: timed out; saw {:#?}", self.seen),
            };
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if topic.ends_with("/thing/file/download") {
                let off = v["params"]["fileBlock"]["offset"].as_u64().unwrap() as u32;
                let len = v["params"]["fileBlock"]["size"].as_u64().unwrap() as usize;
                self.requests.push(off);
                if off < self.serve_below {
                    let data = &self.image[off as usize..off as usize + len];
                    let mut out = vec![0u8; len + 300];
                    let n = emit_download_reply(
                        &mut out,
                        v["id"].as_str().unwrap_or("1"),
                        Some("ota"),
                        self.image.len() as u32,
                        off,
                        data,
                    )
                    .unwrap();
                    out.truncate(n);
                    self.publish(format!("/sys/{PK}/{DN}/thing/file/download_reply"), out);
                }
            } else if topic.ends_with("/firmware/get") {
                let data = task_url.map_or("{}".to_string(), |u| self.task_json(u));
                let j = format!(r#"{{"id":"{}","code":200,"data":{data}}}"#, v["id"].as_str().unwrap_or("1"));
                self.publish(format!("/sys/{PK}/{DN}/thing/ota/firmware/get_reply"), j.into_bytes());
            }
            let done = until(&topic, &v);
            self.seen.push((topic, v.clone()));
            if done {
                return v;
            }
        }
    }

    pub fn steps(&self) -> Vec<i64> {
        self.seen
            .iter()
            .filter(|(t, _)| t.contains("/progress/"))
            .map(|(_, v)| v["params"]["step"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

/// Whether an uplink is the version report of `version`.
pub fn is_inform(t: &str, v: &Value, version: &str) -> bool {
    t.contains("/inform/") && v["params"]["version"] == version
}
