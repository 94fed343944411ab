//! Model validation and Django-style coercion of JSON request values.
//!
//! The original assigns request values to model fields and then runs Django's `full_clean`,
//! whose `to_python` converts them (a number becomes a string for a `CharField`, `"1"` a
//! boolean, `953674.31` an integer). These helpers do the same conversions and produce
//! Django's messages; anything Django would crash on becomes a 400 instead (B12).

use serde_json::Value;
use uuid::Uuid;

use crate::constants::limits;
use crate::error::ApiError;

/// Parse a machine UUID the way `uuid.UUID(str)` does and return its 32-hex storage form.
pub fn parse_uuid(value: &Value) -> Result<Uuid, ApiError> {
    let text = match value {
        Value::String(s) => s.as_str(),
        _ => {
            return Err(ApiError::validation(
                "uuid",
                &format!("“{}” is not a valid UUID.", display(value)),
            ))
        }
    };
    Uuid::try_parse(text.trim())
        .map_err(|_| ApiError::validation("uuid", &format!("“{text}” is not a valid UUID.")))
}

/// The original's `validate_uuid`: an RFC 4122 variant whose 121 random bits have a Shannon
/// entropy of at least 0.95 (rejects hand-made UUIDs like `00000000-0000-4000-8000-…`).
pub fn uuid_has_entropy(u: &Uuid) -> bool {
    if u.get_variant() != uuid::Variant::RFC4122 {
        return false;
    }
    let bits = u.as_u128();
    // Big-endian bit positions 0–47, 52–63 and 67–127: everything but the version nibble
    // (48–51) and the variant bits (64–66).
    let mut ones = 0u32;
    let mut total = 0u32;
    for pos in (0..48).chain(52..64).chain(67..128) {
        total += 1;
        if bits >> (127 - pos) & 1 == 1 {
            ones += 1;
        }
    }
    let p = f64::from(ones) / f64::from(total);
    let h = |x: f64| if x > 0.0 { -x * x.log2() } else { 0.0 };
    h(p) + h(1.0 - p) >= limits::UUID_MIN_ENTROPY
}

/// Python `str()` of a JSON value, for messages.
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `CharField.to_python`: strings as they are, null as `None`, numbers and booleans as their
/// Python `str()`. Lists and objects are refused (Django would store their `repr`).
pub fn char_field(field: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(_) | Value::Number(_) => Ok(Some(display(v))),
        Value::Array(_) | Value::Object(_) => {
            Err(ApiError::validation(field, "Enter a valid string."))
        }
    }
}

/// Check a `CharField` value: null and blank rules, then `max_length`.
pub fn check_char(
    field: &str,
    v: Option<&str>,
    required: bool,
    max: usize,
) -> Result<(), ApiError> {
    match v {
        None if required => Err(ApiError::validation(field, "This field cannot be null.")),
        Some("") if required => Err(ApiError::validation(field, "This field cannot be blank.")),
        Some(s) if s.chars().count() > max => Err(ApiError::validation(
            field,
            &format!(
                "Ensure this value has at most {max} characters (it has {}).",
                s.chars().count()
            ),
        )),
        _ => Ok(()),
    }
}

/// `BooleanField.to_python`.
pub fn bool_field(field: &str, v: &Value) -> Result<bool, ApiError> {
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_i64() == Some(1) => Some(true),
        Value::Number(n) if n.as_i64() == Some(0) => Some(false),
        Value::String(s) => match s.as_str() {
            "t" | "True" | "1" => Some(true),
            "f" | "False" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::validation(
            field,
            &format!("“{}” value must be either True or False.", display(v)),
        )
    })
}

/// `PositiveIntegerField.to_python` (floats truncate, numeric strings parse) and its `>= min`
/// / `<= max` validators.
pub fn int_field(field: &str, v: &Value, min: i64, max: i64) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::validation(
            field,
            &format!("“{}” value must be an integer.", display(v)),
        )
    };
    let n = match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64().ok_or_else(bad)?;
                if !f.is_finite() || f.abs() > 9.0e15 {
                    return Err(bad());
                }
                // Python int(float) truncates toward zero; the bound above keeps the cast exact.
                #[allow(clippy::cast_possible_truncation)]
                let i = f.trunc() as i64;
                i
            }
        },
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| bad())?,
        Value::Bool(b) => i64::from(*b),
        _ => return Err(bad()),
    };
    if n < min {
        return Err(ApiError::validation(
            field,
            &format!("Ensure this value is greater than or equal to {min}."),
        ));
    }
    if n > max {
        return Err(ApiError::validation(
            field,
            &format!("Ensure this value is less than or equal to {max}."),
        ));
    }
    Ok(n)
}

/// A JSON string list field (`filter`, `exclude`, `ssh_ping_host_keys`): stored as
/// `json.dumps(value, sort_keys=True)`; must be a list of strings.
pub fn string_list_field(field: &str, v: &Value, max: usize) -> Result<String, ApiError> {
    let items = match v {
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::validation(
                field,
                "Must be a valid JSON string list",
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => out.push(s.clone()),
            _ => {
                return Err(ApiError::validation(
                    field,
                    "Must be a valid JSON string list",
                ))
            }
        }
    }
    let text = turku_api_types::pyjson::string_list(&out);
    check_char(field, Some(&text), false, max)?;
    Ok(text)
}

/// Decode a stored JSON string list (tolerating anything else as empty: rows written by the
/// original always validate, and a broken row must not take the endpoint down).
pub fn decode_string_list(text: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(text).unwrap_or_default()
}

/// Python truthiness of a JSON value (`"success" in d and d["success"]`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uuid_entropy_rule() {
        let good = Uuid::parse_str("0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11").expect("uuid");
        assert!(uuid_has_entropy(&good));
        for bad in [
            "00000000-0000-4000-8000-000000000000",
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
            // Wrong variant (NCS), otherwise random-looking.
            "0f4b5e0e-6d1f-4c8e-1a65-3f0c2b7d9e11",
        ] {
            assert!(
                !uuid_has_entropy(&Uuid::parse_str(bad).expect("uuid")),
                "{bad}"
            );
        }
        // The threshold (ones between ~37 % and ~63 %) rejects about 0.5 % of genuine random
        // UUIDs, as the original does; agents simply generate another.
        let accepted = (0..1000)
            .filter(|_| uuid_has_entropy(&Uuid::new_v4()))
            .count();
        assert!(accepted >= 970, "{accepted}");
    }

    #[test]
    fn django_coercions() {
        assert_eq!(
            char_field("f", &json!(5)).expect("int"),
            Some("5".to_owned())
        );
        assert_eq!(
            char_field("f", &json!(true)).expect("bool"),
            Some("True".to_owned())
        );
        assert!(char_field("f", &json!([1])).is_err());
        assert!(bool_field("f", &json!("True")).expect("str"));
        assert!(!bool_field("f", &json!(0)).expect("int"));
        assert!(bool_field("f", &json!("yes")).is_err());
        assert_eq!(
            int_field("f", &json!(953_674.31), 0, i64::MAX).expect("float"),
            953_674
        );
        assert!(int_field("f", &json!(-1), 0, 10).is_err());
        assert!(int_field("f", &json!(70000), 1, 65535).is_err());
        assert_eq!(
            string_list_field("f", &json!(["b", "a"]), 100).expect("list"),
            r#"["b", "a"]"#
        );
        assert!(string_list_field("f", &json!("a"), 100).is_err());
        assert!(string_list_field("f", &json!([1]), 100).is_err());
        assert!(check_char("f", Some(""), true, 10).is_err());
        assert!(check_char("f", Some("12345678901"), false, 10).is_err());
        assert!(truthy(&json!("x")) && !truthy(&json!(0)) && !truthy(&json!(null)));
    }
}
