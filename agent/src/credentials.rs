//! Generated identifiers and secrets: the machine UUID and secret, per-session rsync
//! credentials, the session port. All drawn from the operating system's generator.

use rand::Rng;

use crate::constants::credentials::{SECRET_ALPHABET, SECRET_LEN, UUID_MIN_ENTROPY};
use crate::constants::ping::{PORT_MAX, PORT_MIN};

/// A random version-4 UUID that the coordinator accepts: it refuses UUIDs whose random bits
/// are too unbalanced (about 1 in 60 random ones), and a refused registration would leave
/// the machine unregistered until someone deleted the generated file.
pub fn machine_uuid() -> String {
    loop {
        let candidate = uuid4_from(rand::rngs::OsRng.gen());
        if has_entropy(candidate) {
            return format_uuid(candidate);
        }
    }
}

/// A per-session rsync user name: any uuid4 (nobody validates it).
pub fn session_user() -> String {
    format_uuid(uuid4_from(rand::rngs::OsRng.gen()))
}

/// A machine secret or a per-session rsync password: 30 × `[A-Za-z0-9]`.
pub fn secret() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..SECRET_LEN)
        .map(|_| char::from(SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())]))
        .collect()
}

/// A port from the dynamic range, as the original draws it.
pub fn session_port() -> u16 {
    rand::rngs::OsRng.gen_range(PORT_MIN..=PORT_MAX)
}

/// Sets the version (4) and variant (RFC 4122) bits of 128 random bits.
fn uuid4_from(random: u128) -> u128 {
    let with_version = (random & !(0xf << 76)) | (0x4 << 76);
    (with_version & !(0x3 << 62)) | (0x2 << 62)
}

/// The coordinator's rule: the Shannon entropy of the balance of ones among the 121 random
/// bits (all but the version nibble and the variant bits) is at least 0.95.
pub fn has_entropy(uuid: u128) -> bool {
    let mut ones = 0u32;
    let mut total = 0u32;
    for pos in (0..48).chain(52..64).chain(67..128) {
        total += 1;
        ones += ((uuid >> (127 - pos)) & 1) as u32;
    }
    let p = f64::from(ones) / f64::from(total);
    let h = |x: f64| if x > 0.0 { -x * x.log2() } else { 0.0 };
    h(p) + h(1.0 - p) >= UUID_MIN_ENTROPY
}

fn format_uuid(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_uuids_are_canonical_v4_and_pass_the_rule() {
        for _ in 0..500 {
            let u = machine_uuid();
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4", "{u}");
            assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
            let bits = u128::from_str_radix(&u.replace('-', ""), 16).unwrap();
            assert!(has_entropy(bits));
        }
    }

    #[test]
    fn entropy_rule_refuses_hand_made_uuids() {
        let parse = |s: &str| u128::from_str_radix(&s.replace('-', ""), 16).unwrap();
        assert!(!has_entropy(parse("00000000-0000-4000-8000-000000000000")));
        assert!(!has_entropy(parse("ffffffff-ffff-4fff-bfff-ffffffffffff")));
        assert!(has_entropy(parse("9bef0a75-5a9b-43f7-a66a-7e8c6d7ad91d")));
        // Unbalanced random uuid4s exist: the loop in machine_uuid is needed.
        let unbalanced = uuid4_from(0x0000_0000_0000_0000_0000_0000_ffff_ffff);
        assert!(!has_entropy(unbalanced));
    }

    #[test]
    fn secrets_and_ports() {
        let s = secret();
        assert_eq!(s.len(), 30);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(secret(), s);
        for _ in 0..100 {
            assert!(session_port() >= PORT_MIN);
        }
    }
}
