//! The daemon text protocol (spec §2): greeting, module lines, AUTHREQD and its response.

use super::prim::Decoded;
use crate::constants::*;
use crate::error::DecodeError;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use md4::Md4;
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// Finds one `\n`-terminated line; the returned value has `\n` and a trailing `\r` removed.
/// A line longer than `max` without a newline is an error, so a peer cannot make us buffer
/// without bound.
pub fn decode_line(buf: &[u8], max: usize) -> Result<Decoded<Vec<u8>>, DecodeError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i <= max => {
            let mut line = &buf[..i];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            Ok(Decoded::Complete {
                value: line.to_vec(),
                consumed: i + 1,
            })
        }
        Some(i) => Err(DecodeError::TooLong {
            what: "line",
            len: i as u64,
            max: max as u64,
        }),
        None if buf.len() > max => Err(DecodeError::TooLong {
            what: "line",
            len: buf.len() as u64,
            max: max as u64,
        }),
        None => Ok(Decoded::Incomplete { needed: 1 }),
    }
}

/// A parsed `@RSYNCD: <ver>[.<sub>] [digest…]` greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub protocol: u32,
    pub sub: Option<u32>,
    /// Auth digest names, if the peer sent a list.
    pub digests: Option<Vec<String>>,
}

impl Greeting {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{RSYNCD_PREFIX}{}", self.protocol);
        if let Some(sub) = self.sub {
            s.push_str(&format!(".{sub}"));
        }
        if let Some(d) = &self.digests {
            for n in d {
                s.push(' ');
                s.push_str(n);
            }
        }
        s.push('\n');
        s.into_bytes()
    }
}

fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 9 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

pub fn parse_greeting(line: &[u8]) -> Result<Greeting, DecodeError> {
    let bad =
        || DecodeError::BadLine(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned());
    let s = std::str::from_utf8(line).map_err(|_| bad())?;
    let rest = s.strip_prefix(RSYNCD_PREFIX).ok_or_else(bad)?;
    let (protocol, rest) = leading_number(rest).ok_or_else(bad)?;
    let (sub, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let (sub, r) = leading_number(r).ok_or_else(bad)?;
            (Some(sub), r)
        }
        None => (None, rest),
    };
    if protocol >= 30 && sub.is_none() {
        return Err(DecodeError::BadLine(
            "greeting omits the subprotocol value".into(),
        ));
    }
    let digests = match rest.strip_prefix(' ') {
        Some(list) if !list.trim().is_empty() => {
            Some(list.split_ascii_whitespace().map(str::to_owned).collect())
        }
        _ if rest.trim().is_empty() => None,
        _ => return Err(bad()),
    };
    if protocol > 31 && digests.is_none() {
        return Err(DecodeError::BadLine(
            "greeting above protocol 31 lacks the digest list".into(),
        ));
    }
    Ok(Greeting {
        protocol,
        sub,
        digests,
    })
}

/// What the daemon said after the module line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    Ok,
    Exit,
    AuthRequired {
        challenge: String,
    },
    Error(String),
    /// MOTD or listing text.
    Text(Vec<u8>),
}

pub fn classify_line(line: &[u8]) -> ServerLine {
    if line == RSYNCD_OK.as_bytes() {
        return ServerLine::Ok;
    }
    if line == RSYNCD_EXIT.as_bytes() {
        return ServerLine::Exit;
    }
    if let Some(ch) = line.strip_prefix(RSYNCD_AUTHREQD.as_bytes()) {
        return ServerLine::AuthRequired {
            challenge: String::from_utf8_lossy(ch).trim().to_owned(),
        };
    }
    // Stock writes `@ERROR: text`, openrsync `@ERROR text` (no colon); a stock client takes
    // any line starting with `@ERROR` as fatal, and so do we.
    if let Some(rest) = line.strip_prefix(ERROR_PREFIX.as_bytes()) {
        let text = rest.strip_prefix(b":").unwrap_or(rest);
        return ServerLine::Error(String::from_utf8_lossy(text).trim().to_owned());
    }
    ServerLine::Text(line.to_vec())
}

/// Digest used for the AUTHREQD response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDigest {
    Sha512,
    Sha256,
    Sha1,
    Md5,
    /// List-less peers below protocol 30: MD4 over a 4-byte zero seed, password, challenge.
    Md4Old,
    /// `md4` named in a digest list: plain MD4 of password and challenge.
    Md4,
}

impl AuthDigest {
    pub fn from_name(n: &str) -> Option<Self> {
        Some(match n {
            "sha512" => AuthDigest::Sha512,
            "sha256" => AuthDigest::Sha256,
            "sha1" => AuthDigest::Sha1,
            "md5" => AuthDigest::Md5,
            "md4" => AuthDigest::Md4,
            _ => return None,
        })
    }

    /// Picks the digest as a stock client would (spec §2.3).
    pub fn choose(peer: Option<&[String]>, protocol: u32) -> Option<Self> {
        match peer {
            Some(list) => list
                .iter()
                .find(|n| AUTH_DIGEST_NAMES.contains(&n.as_str()))
                .and_then(|n| AuthDigest::from_name(n)),
            None if protocol >= 30 => Some(AuthDigest::Md5),
            None => Some(AuthDigest::Md4Old),
        }
    }
}

/// `base64_nopad(H(password || challenge))`.
pub fn auth_response(digest: AuthDigest, password: &[u8], challenge: &str) -> String {
    fn h<D: Digest>(mut d: D, pw: &[u8], ch: &[u8]) -> Vec<u8> {
        d.update(pw);
        d.update(ch);
        d.finalize().to_vec()
    }
    let ch = challenge.as_bytes();
    let raw = match digest {
        AuthDigest::Sha512 => h(Sha512::new(), password, ch),
        AuthDigest::Sha256 => h(Sha256::new(), password, ch),
        AuthDigest::Sha1 => h(Sha1::new(), password, ch),
        AuthDigest::Md5 => h(Md5::new(), password, ch),
        AuthDigest::Md4 => h(Md4::new(), password, ch),
        AuthDigest::Md4Old => {
            let mut d = Md4::new();
            d.update([0u8; 4]);
            h(d, password, ch)
        }
    };
    STANDARD_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_stock_greetings() {
        let g = parse_greeting(b"@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4").unwrap();
        assert_eq!(g.protocol, 32);
        assert_eq!(g.sub, Some(0));
        assert_eq!(g.digests.as_ref().map(Vec::len), Some(5));
        assert_eq!(parse_greeting(b"@RSYNCD: 31.0").unwrap().digests, None);
        // openrsync (macOS 15+): protocol 29, no subprotocol, no digest list.
        assert_eq!(
            parse_greeting(b"@RSYNCD: 29").unwrap(),
            Greeting {
                protocol: 29,
                sub: None,
                digests: None
            }
        );
        assert_eq!(parse_greeting(b"@RSYNCD: 27").unwrap().protocol, 27);
        assert!(parse_greeting(b"@RSYNCD: 32.0").is_err());
        assert!(parse_greeting(b"@RSYNCD: 30").is_err());
        assert!(parse_greeting(b"hello").is_err());
    }

    #[test]
    fn classifies_lines() {
        assert_eq!(classify_line(b"@RSYNCD: OK"), ServerLine::Ok);
        assert_eq!(classify_line(b"@RSYNCD: EXIT"), ServerLine::Exit);
        assert_eq!(
            classify_line(b"@RSYNCD: AUTHREQD abc"),
            ServerLine::AuthRequired {
                challenge: "abc".into()
            }
        );
        assert_eq!(
            classify_line(b"@ERROR: Unknown module 'x'"),
            ServerLine::Error("Unknown module 'x'".into())
        );
        // openrsync: no colon after @ERROR.
        assert_eq!(
            classify_line(b"@ERROR mod: authentication failed"),
            ServerLine::Error("mod: authentication failed".into())
        );
        assert_eq!(classify_line(b"@ERROR"), ServerLine::Error(String::new()));
        assert_eq!(
            classify_line(b"welcome"),
            ServerLine::Text(b"welcome".to_vec())
        );
    }

    #[test]
    fn line_bounds() {
        assert_eq!(
            decode_line(b"ab\r\ncd", 10).unwrap(),
            Decoded::Complete {
                value: b"ab".to_vec(),
                consumed: 4
            }
        );
        assert_eq!(
            decode_line(b"abc", 10).unwrap(),
            Decoded::Incomplete { needed: 1 }
        );
        assert!(decode_line(b"abcdefghijkl", 10).is_err());
    }

    #[test]
    fn auth_digest_choice() {
        let l: Vec<String> = ["md4", "sha256", "sha512"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(AuthDigest::choose(Some(&l), 32), Some(AuthDigest::Sha256));
        assert_eq!(AuthDigest::choose(None, 30), Some(AuthDigest::Md5));
        assert_eq!(AuthDigest::choose(None, 29), Some(AuthDigest::Md4Old));
        // sha512 response length matches the 86-char challenge length stock uses.
        assert_eq!(auth_response(AuthDigest::Sha512, b"pw", "c").len(), 86);
        assert_eq!(auth_response(AuthDigest::Md5, b"pw", "c").len(), 22);
    }

    #[test]
    fn auth_responses_match_reference_digests() {
        // Computed independently (Python hashlib, base64 without padding).
        let cases = [
            (AuthDigest::Sha512, "cteeSQ6PVVshP8Vcy5dcLLWULmSGhS94o2+/MdqcsLZY8Vzxtzm1bkTyqaOv7QKL7zxxcZM7XXIL9qUMocA8Sg"),
            (AuthDigest::Sha256, "S0h1g+kHuzi25V7oFitNUODKVhtBj8EEYCQOZra+pJk"),
            (AuthDigest::Sha1, "TTimTGl3DmNGTanwa0BuSTZS5rk"),
            (AuthDigest::Md5, "P1p7Rl1/QsYdPMXRQDLCPA"),
        ];
        for (d, want) in cases {
            assert_eq!(auth_response(d, b"s3cret", "challenge123"), want, "{d:?}");
        }
        // RFC 1320: MD4("abc") = a448017aaf21d8525fc10ae87aa6729d.
        assert_eq!(
            auth_response(AuthDigest::Md4, b"a", "bc"),
            "pEgBeq8h2FJfwQroeqZynQ"
        );
        // The old form hashes four zero bytes first.
        let mut h = Md4::new();
        h.update([0u8, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(
            auth_response(AuthDigest::Md4Old, b"a", "bc"),
            STANDARD_NO_PAD.encode(h.finalize())
        );
    }

    proptest! {
        #[test]
        fn greeting_roundtrip(p in 20u32..=40, sub in 0u32..5, d in proptest::option::of(proptest::collection::vec("[a-z0-9]{1,8}", 1..5))) {
            let g = Greeting { protocol: p, sub: Some(sub), digests: d };
            let e = g.encode();
            let (line, used) = decode_line(&e, 4096).unwrap().complete().unwrap();
            prop_assert_eq!(used, e.len());
            match parse_greeting(&line) {
                Ok(back) => prop_assert_eq!(back, g),
                Err(_) => prop_assert!(p > 31 && g.digests.is_none()),
            }
        }

        #[test]
        fn line_parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_line(&b, 100);
            let _ = parse_greeting(&b);
            let _ = classify_line(&b);
        }
    }
}
