//! The modem boards' download parsers (app/src/http.rs, compiled as it is): the task's URL
//! (`split_url`) and the HTTP/1.1 response head (`head`, through `httparse`). Never panics; a URL
//! splits into pieces of it without what would break the AT command or the request line; a head
//! ends inside the bytes, after its blank line, and is found the same with more bytes behind it.
//! The first byte says where the input splits into a URL and a head.
#![no_main]
use fuzz::http::{head, split_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let (url, bytes) = rest.split_at((cut as usize).min(rest.len()));
    if let Ok(url) = core::str::from_utf8(url) {
        if let Some((_, host, _, path)) = split_url(url) {
            assert!(!host.is_empty() && !host.contains(['"', ' ', ',', '/', '@']), "host {host:?}");
            assert!(path.starts_with('/') && !path.contains([' ', '\r', '\n', '"']), "path {path:?}");
            assert!(url.contains(host) && (path == "/" || url.ends_with(path)));
        }
    }
    if let Ok(Some(h)) = head(bytes) {
        assert!(h.end >= 4 && h.end <= bytes.len() && &bytes[h.end - 4..h.end] == b"\r\n\r\n");
        let mut more = bytes.to_vec();
        more.extend_from_slice(b"trailing body bytes\r\n\r\n");
        assert_eq!(head(&more), Ok(Some(h)), "the body changed the head");
    }
});
