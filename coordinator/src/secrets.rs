//! Secret hashing in Django's encoded forms.
//!
//! New hashes are Argon2id, encoded exactly as Django's `Argon2PasswordHasher` writes them
//! (`argon2$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`), so a database stays readable by the
//! original. Django `pbkdf2_sha256$<iterations>$<salt>$<hash>` also verifies (older Turku
//! installations), and the caller rehashes it on success, as Django's `check_password`
//! setter does. Every comparison of secret material is constant-time.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use rand::distributions::{Alphanumeric, DistString};
use subtle::ConstantTimeEq;

use crate::constants::secrets as c;

/// Argon2 cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub time_cost: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashParams {
    /// Django's defaults, so hashes are interchangeable with the original.
    fn default() -> Self {
        Self {
            memory_kib: c::ARGON2_MEMORY_KIB,
            time_cost: c::ARGON2_TIME_COST,
            parallelism: c::ARGON2_PARALLELISM,
        }
    }
}

impl HashParams {
    /// Minimal cost, for tests and load generation only.
    pub fn insecure_fast() -> Self {
        Self {
            memory_kib: 64,
            time_cost: 1,
            parallelism: 1,
        }
    }
}

/// Outcome of checking a secret against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The secret does not match (or the hash is unusable or unknown).
    No,
    /// The secret matches and the hash uses the current algorithm and parameters.
    Yes,
    /// The secret matches but the hash should be replaced (older algorithm or parameters).
    YesRehash,
}

impl Verified {
    /// Whether the secret matched.
    pub fn ok(self) -> bool {
        !matches!(self, Self::No)
    }
}

/// Failure to produce a hash (only possible with invalid parameters).
#[derive(Debug, thiserror::Error)]
#[error("argon2: {0}")]
pub struct HashError(String);

/// Hash `secret` with Argon2id and a fresh Django-style salt.
pub fn hash(secret: &str, params: HashParams) -> Result<String, HashError> {
    let salt = Alphanumeric.sample_string(&mut rand::thread_rng(), c::SALT_CHARS);
    hash_with_salt(secret, &salt, params)
}

fn hash_with_salt(secret: &str, salt: &str, params: HashParams) -> Result<String, HashError> {
    let mut out = [0u8; c::ARGON2_HASH_LEN];
    argon2_raw(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        secret.as_bytes(),
        salt.as_bytes(),
        &mut out,
    )?;
    Ok(format!(
        "{}$argon2id$v=19$m={},t={},p={}${}${}",
        c::ARGON2_PREFIX,
        params.memory_kib,
        params.time_cost,
        params.parallelism,
        STANDARD_NO_PAD.encode(salt.as_bytes()),
        STANDARD_NO_PAD.encode(out)
    ))
}

fn argon2_raw(
    alg: Algorithm,
    version: Version,
    params: HashParams,
    secret: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), HashError> {
    let p = Params::new(
        params.memory_kib,
        params.time_cost,
        params.parallelism,
        Some(out.len()),
    )
    .map_err(|e| HashError(e.to_string()))?;
    Argon2::new(alg, version, p)
        .hash_password_into(secret, salt, out)
        .map_err(|e| HashError(e.to_string()))
}

/// Check `secret` against a Django-encoded hash. Unknown formats and unusable (`!…`) hashes
/// never match.
pub fn verify(secret: &str, encoded: &str, current: HashParams) -> Verified {
    if encoded.starts_with(c::UNUSABLE_PREFIX) {
        return Verified::No;
    }
    match encoded.split_once('$') {
        Some((c::ARGON2_PREFIX, rest)) => verify_argon2(secret, rest, current),
        Some((c::PBKDF2_SHA256_PREFIX, rest)) => verify_pbkdf2(secret, rest),
        _ => Verified::No,
    }
}

/// `<variant>$v=<n>$m=<m>,t=<t>,p=<p>$<salt>$<hash>` (the `v=` part is absent in hashes from
/// argon2 1.0, version 0x10).
fn verify_argon2(secret: &str, phc: &str, current: HashParams) -> Verified {
    let parts: Vec<&str> = phc.split('$').collect();
    let (variant, version, params, salt, hash) = match parts.as_slice() {
        [variant, v, params, salt, hash] => (*variant, v.strip_prefix("v="), *params, *salt, *hash),
        [variant, params, salt, hash] => (*variant, Some("16"), *params, *salt, *hash),
        _ => return Verified::No,
    };
    let alg = match variant {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return Verified::No,
    };
    let version = match version {
        Some("19") => Version::V0x13,
        Some("16") => Version::V0x10,
        _ => return Verified::No,
    };
    let Some(p) = parse_params(params) else {
        return Verified::No;
    };
    let (Ok(salt), Ok(expected)) = (STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash))
    else {
        return Verified::No;
    };
    // Bound the work an imported or hand-edited row can ask for.
    if !(4..=1024).contains(&expected.len()) || p.memory_kib > 4 * 1024 * 1024 || p.time_cost > 64 {
        return Verified::No;
    }
    let mut out = vec![0u8; expected.len()];
    if argon2_raw(alg, version, p, secret.as_bytes(), &salt, &mut out).is_err() {
        return Verified::No;
    }
    if !bool::from(out.ct_eq(&expected)) {
        return Verified::No;
    }
    let current_form = alg == Algorithm::Argon2id
        && version == Version::V0x13
        && p == current
        && expected.len() == c::ARGON2_HASH_LEN;
    if current_form {
        Verified::Yes
    } else {
        Verified::YesRehash
    }
}

fn parse_params(s: &str) -> Option<HashParams> {
    let (mut m, mut t, mut p) = (None, None, None);
    for kv in s.split(',') {
        let (k, v) = kv.split_once('=')?;
        let v: u32 = v.parse().ok()?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return None,
        }
    }
    Some(HashParams {
        memory_kib: m?,
        time_cost: t?,
        parallelism: p?,
    })
}

/// `<iterations>$<salt>$<base64 hash>`; always asks for a rehash (Argon2 is preferred).
fn verify_pbkdf2(secret: &str, rest: &str) -> Verified {
    let mut parts = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(hash)) = (parts.next(), parts.next(), parts.next())
    else {
        return Verified::No;
    };
    let Ok(iterations) = iterations.parse::<u32>() else {
        return Verified::No;
    };
    let Ok(expected) = STANDARD.decode(hash) else {
        return Verified::No;
    };
    if iterations == 0 || iterations > 10_000_000 || expected.len() != 32 {
        return Verified::No;
    }
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(secret.as_bytes(), salt.as_bytes(), iterations, &mut out);
    if bool::from(out.as_slice().ct_eq(&expected)) {
        Verified::YesRehash
    } else {
        Verified::No
    }
}

/// A fresh registration secret: 30 characters from `[A-Za-z0-9]` (Django `get_random_string(30)`).
pub fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), c::REGISTRATION_SECRET_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Django's PBKDF2 layout with a cheap iteration count (Django uses 600000+).
    const PBKDF2_HUNTER2: &str = "pbkdf2_sha256$1000$abcdefghijklmnopqrstuv$";

    #[test]
    fn argon2_round_trip_and_format() {
        let p = HashParams::insecure_fast();
        let h = hash("s3cret", p).expect("hash");
        assert!(h.starts_with("argon2$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert_eq!(verify("s3cret", &h, p), Verified::Yes);
        assert_eq!(verify("s3cret!", &h, p), Verified::No);
        // Verifying under different current parameters asks for a rehash.
        assert_eq!(
            verify(
                "s3cret",
                &h,
                HashParams {
                    memory_kib: 128,
                    ..p
                }
            ),
            Verified::YesRehash
        );
    }

    /// Reference vectors of the Argon2 reference implementation (password `password`, salt
    /// `somesalt`), in Django's `argon2` + PHC form, including a version 0x10 hash without `v=`.
    #[test]
    fn argon2_reference_vectors() {
        let p = HashParams::insecure_fast();
        let id = "argon2$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";
        assert_eq!(verify("password", id, p), Verified::YesRehash);
        assert_eq!(
            verify(
                "password",
                id,
                HashParams {
                    memory_kib: 256,
                    time_cost: 2,
                    parallelism: 1
                }
            ),
            Verified::Yes
        );
        assert_eq!(verify("passwore", id, p), Verified::No);
        let old =
            "argon2$argon2i$m=256,t=2,p=1$c29tZXNhbHQ$/U3YPXYsSb3q9XxHvc0MLxur+GP960kN9j7emXX8zwY";
        assert_eq!(verify("password", old, p), Verified::YesRehash);
        // Our own encoding reproduces the reference bytes for the same inputs.
        let ours = hash_with_salt(
            "password",
            "somesalt",
            HashParams {
                memory_kib: 256,
                time_cost: 2,
                parallelism: 1,
            },
        )
        .expect("hash");
        assert_eq!(ours, id);
    }

    #[test]
    fn pbkdf2_verifies_and_asks_for_rehash() {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"hunter2", b"abcdefghijklmnopqrstuv", 1000, &mut out);
        let encoded = format!("{PBKDF2_HUNTER2}{}", STANDARD.encode(out));
        assert_eq!(
            verify("hunter2", &encoded, HashParams::default()),
            Verified::YesRehash
        );
        assert_eq!(
            verify("hunter3", &encoded, HashParams::default()),
            Verified::No
        );
        // Known answer for PBKDF2-HMAC-SHA256 ("password", "salt", 1 iteration), checked with
        // Python's `hashlib.pbkdf2_hmac`.
        let known = "pbkdf2_sha256$1$salt$Eg+2z/z4syxD5yJSVsT4N6hlSMkszDVICAWYfLcL4Xs=";
        assert_eq!(
            verify("password", known, HashParams::default()),
            Verified::YesRehash
        );
    }

    #[test]
    fn garbage_and_unusable_never_verify() {
        let p = HashParams::insecure_fast();
        for enc in [
            "",
            "!",
            "!argon2$x",
            "md5$a$b",
            "argon2$argon2id$v=19$m=64,t=1,p=1$%%%$%%%",
            "pbkdf2_sha256$x$y$z",
        ] {
            assert_eq!(verify("x", enc, p), Verified::No, "{enc}");
        }
    }

    #[test]
    fn random_secrets_are_alphanumeric() {
        let s = random_secret();
        assert_eq!(s.len(), 30);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, random_secret());
    }
}
