//! Uncompressed delta tokens (spec §6.6): `int32 n>0` + n literal bytes, `int32 -(k+1)` =
//! copy basis block k, `int32 0` = end of file data.

use super::prim::*;
use crate::constants::CHUNK_SIZE;
use crate::error::DecodeError;
use crate::limits::Limits;

/// A token header. Literal bytes are not part of it: receivers stream them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Literal(u32),
    Block(u32),
    End,
}

/// Decodes one token header, validating block indexes against `block_count` and literal
/// lengths against `limits.max_literal`.
pub fn decode_token(
    buf: &[u8],
    block_count: u32,
    limits: &Limits,
) -> Result<Decoded<Token>, DecodeError> {
    run(buf, |c| {
        let t = c.i32()?;
        if t == 0 {
            Ok(Token::End)
        } else if t > 0 {
            if t as u32 > limits.max_literal {
                return Err(DecodeError::TooLong {
                    what: "literal token",
                    len: t as u64,
                    max: u64::from(limits.max_literal),
                }
                .into());
            }
            Ok(Token::Literal(t as u32))
        } else {
            let k = (-(i64::from(t) + 1)) as u64;
            if k >= u64::from(block_count) {
                return Err(DecodeError::BadToken {
                    token: t,
                    count: block_count,
                }
                .into());
            }
            Ok(Token::Block(k as u32))
        }
    })
}

/// A token with its literal data, for whole-buffer decoding (fuzzing, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedToken {
    Literal(Vec<u8>),
    Block(u32),
    End,
}

pub fn decode_owned_token(
    buf: &[u8],
    block_count: u32,
    limits: &Limits,
) -> Result<Decoded<OwnedToken>, DecodeError> {
    run(buf, |c| {
        let h = c.bytes(4)?;
        let t = match decode_token(h, block_count, limits)? {
            Decoded::Complete { value, .. } => value,
            Decoded::Incomplete { .. } => {
                return Err(DecodeError::Other("unreachable token state").into())
            }
        };
        Ok(match t {
            Token::Literal(n) => OwnedToken::Literal(c.bytes(n as usize)?.to_vec()),
            Token::Block(k) => OwnedToken::Block(k),
            Token::End => OwnedToken::End,
        })
    })
}

/// Literal data split into runs of at most 32 KiB: larger runs break rsync 3.4.3/3.4.4.
pub fn encode_literal(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(CHUNK_SIZE) {
        put_i32(out, chunk.len() as i32);
        out.extend_from_slice(chunk);
    }
}

pub fn encode_block(k: u32, out: &mut Vec<u8>) {
    put_i32(out, -(k as i32) - 1);
}

pub fn encode_end(out: &mut Vec<u8>) {
    put_i32(out, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literal_runs_are_capped() {
        let mut o = Vec::new();
        encode_literal(&vec![1u8; 100_000], &mut o);
        let l = Limits::default();
        let mut pos = 0;
        let mut sizes = Vec::new();
        while pos < o.len() {
            let (t, n) = decode_owned_token(&o[pos..], 0, &l)
                .unwrap()
                .complete()
                .unwrap();
            pos += n;
            if let OwnedToken::Literal(d) = t {
                sizes.push(d.len());
            }
        }
        assert_eq!(sizes, [32768, 32768, 32768, 1696]);
    }

    #[test]
    fn block_index_is_checked() {
        let l = Limits::default();
        assert_eq!(
            decode_token(&(-1i32).to_le_bytes(), 1, &l)
                .unwrap()
                .complete(),
            Some((Token::Block(0), 4))
        );
        assert!(decode_token(&(-2i32).to_le_bytes(), 1, &l).is_err());
        assert!(decode_token(&i32::MIN.to_le_bytes(), 5, &l).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(toks in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..5000).prop_map(OwnedToken::Literal),
            (0u32..1000).prop_map(OwnedToken::Block),
        ], 0..20)) {
            let mut o = Vec::new();
            for t in &toks {
                match t { OwnedToken::Literal(d) => encode_literal(d, &mut o), OwnedToken::Block(k) => encode_block(*k, &mut o), OwnedToken::End => {} }
            }
            encode_end(&mut o);
            let l = Limits::default();
            let mut pos = 0;
            let mut got = Vec::new();
            loop {
                let (t, n) = decode_owned_token(&o[pos..], 1000, &l).unwrap().complete().unwrap();
                prop_assert!((decode_owned_token(&o[pos..pos + n - 1], 1000, &l).unwrap()).is_incomplete());
                pos += n;
                if t == OwnedToken::End { break; }
                got.push(t);
            }
            prop_assert_eq!(got, toks);
            prop_assert_eq!(pos, o.len());
        }
    }
}
