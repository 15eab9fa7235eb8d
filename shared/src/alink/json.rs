//! What serde-json-core cannot do: read a top-level member whose type varies between senders
//! (Aliyun's `id` is a number in current pushes and a string in older ones; `code` is the string
//! "1000" in pushes and the number 200 in replies). Everything else is parsed with serde-json-core.

/// A scalar JSON value, as its raw text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string, without its quotes, escapes left as they are.
    Str(&'a str),
    /// A number (or `true`/`false`/`null`), as written.
    Num(&'a str),
}

impl<'a> Scalar<'a> {
    /// The text whatever the type: `"1000"` and `1000` both give `1000`.
    pub fn text(&self) -> &'a str {
        match *self {
            Scalar::Str(s) | Scalar::Num(s) => s,
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }
    /// A string; returns its raw contents.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        let s = core::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        self.i += 1;
        Some(s)
    }
    /// Skips any value; returns it if it is a scalar.
    fn value(&mut self, depth: u8) -> Option<Option<Scalar<'a>>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(|s| Some(Scalar::Str(s))),
            open @ (b'{' | b'[') => {
                if depth > 16 {
                    return None;
                }
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                if self.eat(close).is_some() {
                    return Some(None);
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.eat(b':')?;
                    }
                    self.value(depth + 1)?;
                    if self.eat(b',').is_none() {
                        self.eat(close)?;
                        return Some(None);
                    }
                }
            }
            _ => {
                let start = self.i;
                while self.b.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c)) {
                    self.i += 1;
                }
                let s = core::str::from_utf8(&self.b[start..self.i]).ok()?;
                (!s.is_empty()).then_some(Some(Scalar::Num(s)))
            }
        }
    }
}

/// The scalar value of `key` in the top-level object of `json`, if the object parses that far
/// and the member is there and scalar.
pub fn top_level<'a>(json: &'a [u8], key: &str) -> Option<Scalar<'a>> {
    let mut c = Cursor { b: json, i: 0 };
    c.eat(b'{')?;
    if c.eat(b'}').is_some() {
        return None;
    }
    loop {
        let k = c.string()?;
        c.eat(b':')?;
        let v = c.value(0)?;
        if k == key {
            return v;
        }
        c.eat(b',')?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_either_type_are_found() {
        let j = br#"{"code":"1000","data":{"id":5,"x":[1,{"a":"}"}]},"id":1695281536874,"message":"su\"ccess"}"#;
        assert_eq!(top_level(j, "code"), Some(Scalar::Str("1000")));
        assert_eq!(top_level(j, "id"), Some(Scalar::Num("1695281536874")));
        assert_eq!(top_level(j, "message"), Some(Scalar::Str("su\\\"ccess")));
        assert_eq!(top_level(j, "data"), None);
        assert_eq!(top_level(j, "missing"), None);
        assert_eq!(top_level(br#" { "id" : "12" , "code" : 200 } "#, "code"), Some(Scalar::Num("200")));
    }

    #[test]
    fn broken_json_gives_none_not_a_panic() {
        for j in [&b""[..], b"{", b"{\"id\"", b"{\"id\":", b"{\"id\":\"12", b"[1,2]", b"{\"a\":{\"b\":", b"\"\\"] {
            assert_eq!(top_level(j, "id"), None, "{:?}", core::str::from_utf8(j));
        }
        let deep = [b'['; 100];
        let mut j = b"{\"a\":".to_vec();
        j.extend_from_slice(&deep);
        assert_eq!(top_level(&j, "id"), None);
    }
}
