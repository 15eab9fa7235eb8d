//! Topic names (docs/PROTOCOL.md §2, §3.1).

use super::AlinkError;
use core::fmt::Write;
use heapless::String;

/// A topic name (SDKs cap them at 128 bytes).
pub type Topic = String<128>;

/// The OTA topics of one device.
#[derive(Clone, Copy, Debug)]
pub struct Topics<'a> {
    /// productKey
    pub product_key: &'a str,
    /// deviceName
    pub device_name: &'a str,
}

/// Downlink topics the device subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Downlink {
    /// `/ota/device/upgrade/{pk}/{dn}`: a pushed task.
    Upgrade,
    /// `/sys/{pk}/{dn}/thing/ota/firmware/get_reply`: the answer to firmware.get.
    FirmwareGetReply,
    /// `/sys/{pk}/{dn}/thing/file/download_reply`: a block of an MQTT stream download.
    DownloadReply,
}

impl Topics<'_> {
    fn make(&self, f: impl FnOnce(&mut Topic, &str, &str) -> core::fmt::Result) -> Result<Topic, AlinkError> {
        let mut t = Topic::new();
        f(&mut t, self.product_key, self.device_name).map_err(|_| AlinkError::TooLong)?;
        Ok(t)
    }
    /// Version report (uplink).
    pub fn inform(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/ota/device/inform/{pk}/{dn}"))
    }
    /// Progress report (uplink).
    pub fn progress(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/ota/device/progress/{pk}/{dn}"))
    }
    /// Task push (downlink).
    pub fn upgrade(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/ota/device/upgrade/{pk}/{dn}"))
    }
    /// Pull request (uplink).
    pub fn firmware_get(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/sys/{pk}/{dn}/thing/ota/firmware/get"))
    }
    /// Pull reply (downlink).
    pub fn firmware_get_reply(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/sys/{pk}/{dn}/thing/ota/firmware/get_reply"))
    }
    /// Block request (uplink).
    pub fn file_download(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/sys/{pk}/{dn}/thing/file/download"))
    }
    /// Block reply (downlink).
    pub fn file_download_reply(&self) -> Result<Topic, AlinkError> {
        self.make(|t, pk, dn| write!(t, "/sys/{pk}/{dn}/thing/file/download_reply"))
    }

    /// What the device subscribes to: the push, the `firmware/get` reply, the block replies.
    pub fn downlinks(&self) -> Result<[Topic; 3], AlinkError> {
        Ok([self.upgrade()?, self.firmware_get_reply()?, self.file_download_reply()?])
    }

    /// Which of our downlinks `topic` is, if any.
    pub fn classify(&self, topic: &str) -> Option<Downlink> {
        let is = |t: Result<Topic, AlinkError>| t.is_ok_and(|t| t == topic);
        if is(self.upgrade()) {
            Some(Downlink::Upgrade)
        } else if is(self.firmware_get_reply()) {
            Some(Downlink::FirmwareGetReply)
        } else if is(self.file_download_reply()) {
            Some(Downlink::DownloadReply)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Topics<'static> = Topics { product_key: "a1B2c3D4e5F", device_name: "dev-001" };

    #[test]
    fn topics_are_spelled_as_aliyun_documents_them() {
        assert_eq!(T.inform().unwrap(), "/ota/device/inform/a1B2c3D4e5F/dev-001");
        assert_eq!(T.progress().unwrap(), "/ota/device/progress/a1B2c3D4e5F/dev-001");
        assert_eq!(T.upgrade().unwrap(), "/ota/device/upgrade/a1B2c3D4e5F/dev-001");
        assert_eq!(T.firmware_get().unwrap(), "/sys/a1B2c3D4e5F/dev-001/thing/ota/firmware/get");
        assert_eq!(T.firmware_get_reply().unwrap(), "/sys/a1B2c3D4e5F/dev-001/thing/ota/firmware/get_reply");
        assert_eq!(T.file_download().unwrap(), "/sys/a1B2c3D4e5F/dev-001/thing/file/download");
        assert_eq!(T.file_download_reply().unwrap(), "/sys/a1B2c3D4e5F/dev-001/thing/file/download_reply");
    }

    #[test]
    fn downlinks_are_recognised_and_others_are_not() {
        assert_eq!(T.classify("/ota/device/upgrade/a1B2c3D4e5F/dev-001"), Some(Downlink::Upgrade));
        assert_eq!(T.classify("/sys/a1B2c3D4e5F/dev-001/thing/file/download_reply"), Some(Downlink::DownloadReply));
        assert_eq!(T.classify("/ota/device/upgrade/a1B2c3D4e5F/dev-002"), None);
        assert_eq!(T.classify("/ota/device/inform/a1B2c3D4e5F/dev-001"), None);
    }

    #[test]
    fn an_overlong_device_name_is_an_error() {
        let long = "d".repeat(120);
        assert_eq!(Topics { product_key: "pk", device_name: &long }.firmware_get_reply(), Err(AlinkError::TooLong));
    }
}
