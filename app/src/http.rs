//! The two parsers of a download's outside bytes on the modem boards, kept free of I/O so they
//! can be fuzzed as they are (`fuzz/fuzz_targets/http.rs`): the task's URL, and the HTTP/1.1
//! response head (parsed by `httparse`).

use shared::ota::HttpError;

/// Headers parsed.
const HEADERS: usize = 32;

/// `scheme://host[:port]/path?query` split: (TLS, host, port, path with query).
pub fn split_url(url: &str) -> Option<(bool, &str, u16, &str)> {
    let (tls, rest) = match url.split_once("://")? {
        (s, r) if s.eq_ignore_ascii_case("https") => (true, r),
        (s, r) if s.eq_ignore_ascii_case("http") => (false, r),
        _ => return None,
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let path = if path.is_empty() { "/" } else { path };
    if authority.contains('@') || path.starts_with('?') {
        return None; // no credentials in URLs; "?q" without a path is not what Aliyun sends
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || host.contains(['"', ' ', ',']) || path.contains([' ', '\r', '\n', '"']) {
        return None;
    }
    Some((tls, host, port, path))
}

/// A response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, the blank line included: the body starts there.
    pub end: usize,
    /// The status code.
    pub status: u16,
    /// The Content-Length (`None`: the body runs until the server closes).
    pub length: Option<u32>,
}

/// The head at the start of `b`: `Ok(None)` while its blank line has not come. A chunked body is
/// refused (the download needs its length, as Aliyun's LinkSDK does); a head `httparse` cannot
/// read, or a Content-Length that is no number, is a protocol error.
pub fn head(b: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { return Ok(None) };
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(&b[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HttpError::Protocol),
    }
    let status = r.code.ok_or(HttpError::Protocol)?;
    let mut length = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") && !h.value.eq_ignore_ascii_case(b"identity") {
            return Err(HttpError::Chunked);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = core::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u32>().ok());
            length = Some(v.ok_or(HttpError::Protocol)?);
        }
    }
    Ok(Some(Head { end, status, length }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let oss = "https://iotx-ota.oss-cn-shanghai.aliyuncs.com/ota/a/b.bin?Expires=1&OSSAccessKeyId=k&Signature=s%2B";
        assert_eq!(
            split_url(oss),
            Some((
                true,
                "iotx-ota.oss-cn-shanghai.aliyuncs.com",
                443,
                "/ota/a/b.bin?Expires=1&OSSAccessKeyId=k&Signature=s%2B"
            ))
        );
        assert_eq!(split_url("http://127.0.0.1:8080/f"), Some((false, "127.0.0.1", 8080, "/f")));
        assert_eq!(split_url("https://h"), Some((true, "h", 443, "/")));
        assert_eq!(split_url("ftp://h/f"), None);
        assert_eq!(split_url("https://u:p@h/f"), None);
        assert_eq!(split_url("https://h:99999/f"), None);
        assert_eq!(split_url("https://h/a b"), None);
        assert_eq!(split_url("https://\"h/f"), None);
    }

    #[test]
    fn heads_give_status_length_and_where_the_body_starts() {
        let ok = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 12\r\nContent-Range: bytes 4-15/16\r\n\r\nbody";
        assert_eq!(head(ok), Ok(Some(Head { end: ok.len() - 4, status: 206, length: Some(12) })));
        assert_eq!(head(&ok[..20]), Ok(None));
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(HttpError::Chunked));
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), Err(HttpError::Protocol));
        assert_eq!(head(b"garbage\r\n\r\n"), Err(HttpError::Protocol));
        assert_eq!(head(b"HTTP/1.1 403 Forbidden\r\n\r\n"), Ok(Some(Head { end: 26, status: 403, length: None })));
    }
}
