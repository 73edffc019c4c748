//! Validation of `POST /v1/veo/generate` bodies (SPEC §1), with one error per bad field.
//!
//! Bodies are judged field by field on the parsed JSON rather than through a derived
//! deserializer, so a client hears about every wrong field at once, by name, with a fix.

use serde_json::{Map, Value};
use url::Url;

use crate::destination::DestinationPolicy;
use crate::{AspectRatio, Model};

pub const PROMPT_MIN_CHARS: usize = 10;
pub const PROMPT_MAX_CHARS: usize = 4000;
pub const WATERMARK_MIN_CHARS: usize = 3;
pub const WATERMARK_MAX_CHARS: usize = 14;

const KNOWN_FIELDS: &[&str] = &[
    "prompt",
    "callback_url",
    "model",
    "model_type",
    "aspect_ratio",
    "seed",
    "watermark_text",
    "bytes_image",
    "start_frame",
    "end_frame",
    "reference_images",
];

const MODELS: [&str; 2] = [Model::ALL[0].as_str(), Model::ALL[1].as_str()];
const ASPECTS: [&str; 2] = [AspectRatio::ALL[0].as_str(), AspectRatio::ALL[1].as_str()];

const IMAGE_FIELDS: &[&str] = &[
    "bytes_image",
    "start_frame",
    "end_frame",
    "reference_images",
];

/// A valid generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    pub callback_url: Option<Url>,
    pub model: Model,
    pub aspect_ratio: AspectRatio,
    /// `None` when the client left it to reelay to pick one.
    pub seed: Option<u32>,
    pub watermark_text: Option<String>,
}

impl GenerateRequest {
    /// A digest of everything the request asks for, to tell a retried request (same
    /// fingerprint) from a different one sent under the same idempotency key.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let fields = [
            Some(self.prompt.as_str()),
            self.callback_url.as_ref().map(Url::as_str),
            Some(self.model.as_str()),
            Some(self.aspect_ratio.as_str()),
            self.watermark_text.as_deref(),
        ];
        for field in fields {
            // A length prefix keeps ("ab","c") and ("a","bc") apart; absent differs from empty.
            match field {
                Some(text) => {
                    h.update([1]);
                    h.update((text.len() as u64).to_le_bytes());
                    h.update(text.as_bytes());
                }
                None => h.update([0]),
            }
        }
        h.update(self.seed.map_or([0; 5], |s| {
            let [a, b, c, d] = s.to_le_bytes();
            [1, a, b, c, d]
        }));
        h.finalize().into()
    }
}

/// One reason a request was refused, named after the field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Validates a parsed body. `null` counts as absent for every optional field.
pub fn parse_generate(
    body: &Value,
    policy: DestinationPolicy,
) -> Result<GenerateRequest, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "must be a JSON object like {\"prompt\": \"A sunset over mountains\"}",
        )]);
    };
    let mut errors = Vec::new();
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                format!(
                    "unknown field; known fields are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            ));
        }
    }
    for field in IMAGE_FIELDS {
        if present(obj, field).is_some() {
            errors.push(FieldError::new(
                field,
                "image input is not supported by this server yet; send a text prompt only",
            ));
        }
    }

    let prompt = match present(obj, "prompt") {
        None => {
            errors.push(FieldError::new("prompt", "is required"));
            None
        }
        Some(Value::String(p)) => {
            let n = p.chars().count();
            if !(PROMPT_MIN_CHARS..=PROMPT_MAX_CHARS).contains(&n) {
                errors.push(FieldError::new(
                    "prompt",
                    format!(
                        "must be {PROMPT_MIN_CHARS} to {PROMPT_MAX_CHARS} characters long (it has {n})"
                    ),
                ));
            } else if p.trim().is_empty() {
                errors.push(FieldError::new("prompt", "must not be blank"));
            }
            Some(p.clone())
        }
        Some(_) => {
            errors.push(FieldError::new("prompt", "must be a string"));
            None
        }
    };

    let callback_url = match present(obj, "callback_url") {
        None => None,
        Some(Value::String(u)) => match policy.check_url(u) {
            Ok(url) => Some(url),
            Err(message) => {
                errors.push(FieldError::new("callback_url", message));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("callback_url", "must be a string"));
            None
        }
    };

    let model = match (present(obj, "model"), present(obj, "model_type")) {
        (Some(a), Some(b)) if a != b => {
            errors.push(FieldError::new(
                "model_type",
                "is an alias of model; send one of them, or the same value in both",
            ));
            None
        }
        (Some(v), _) => enum_field(&mut errors, "model", v, &MODELS),
        (None, Some(v)) => enum_field(&mut errors, "model_type", v, &MODELS),
        (None, None) => Some(Model::Veo3Fast),
    };

    let aspect_ratio = match present(obj, "aspect_ratio") {
        Some(v) => enum_field(&mut errors, "aspect_ratio", v, &ASPECTS),
        None => Some(AspectRatio::Landscape),
    };

    let seed = match present(obj, "seed") {
        None => None,
        Some(v) => match v.as_u64().map(u32::try_from) {
            Some(Ok(seed)) => Some(seed),
            _ => {
                errors.push(FieldError::new(
                    "seed",
                    format!("must be an integer from 0 to {}", u32::MAX),
                ));
                None
            }
        },
    };

    let watermark_text = match present(obj, "watermark_text") {
        None => None,
        Some(Value::String(w)) => {
            let n = w.chars().count();
            if !(WATERMARK_MIN_CHARS..=WATERMARK_MAX_CHARS).contains(&n) {
                errors.push(FieldError::new(
                    "watermark_text",
                    format!(
                        "must be {WATERMARK_MIN_CHARS} to {WATERMARK_MAX_CHARS} characters long (it has {n})"
                    ),
                ));
            }
            Some(w.clone())
        }
        Some(_) => {
            errors.push(FieldError::new("watermark_text", "must be a string"));
            None
        }
    };

    match (prompt, model, aspect_ratio) {
        (Some(prompt), Some(model), Some(aspect_ratio)) if errors.is_empty() => {
            Ok(GenerateRequest {
                prompt,
                callback_url,
                model,
                aspect_ratio,
                seed,
                watermark_text,
            })
        }
        _ => Err(errors),
    }
}

fn present<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

/// Reads a string field naming one value of an API enum (model, aspect ratio).
fn enum_field<T: std::str::FromStr>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: &Value,
    allowed: &[&str],
) -> Option<T> {
    let parsed = value.as_str().and_then(|s| s.parse::<T>().ok());
    if parsed.is_none() {
        let names: Vec<String> = allowed.iter().map(|n| format!("\"{n}\"")).collect();
        errors.push(FieldError::new(
            field,
            format!("must be one of {}", names.join(" or ")),
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STRICT: DestinationPolicy = DestinationPolicy {
        allow_insecure: false,
    };

    fn fields(body: Value) -> Vec<String> {
        parse_generate(&body, STRICT)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn the_seed_request_is_valid_with_defaults() {
        let req = parse_generate(
            &json!({"prompt": "A sunset over mountains", "callback_url": "https://your-app.com/webhook"}),
            STRICT,
        )
        .unwrap();
        assert_eq!(req.model, Model::Veo3Fast);
        assert_eq!(req.aspect_ratio, AspectRatio::Landscape);
        assert_eq!(req.seed, None);
        assert_eq!(
            req.callback_url.unwrap().as_str(),
            "https://your-app.com/webhook"
        );
    }

    #[test]
    fn prompt_length_is_counted_in_characters() {
        assert_eq!(fields(json!({"prompt": "123456789"})), ["prompt"]);
        assert!(parse_generate(&json!({"prompt": "1234567890"}), STRICT).is_ok());
        assert!(parse_generate(&json!({"prompt": "é".repeat(4000)}), STRICT).is_ok());
        assert_eq!(fields(json!({"prompt": "a".repeat(4001)})), ["prompt"]);
        assert_eq!(fields(json!({"prompt": " ".repeat(12)})), ["prompt"]);
        assert_eq!(fields(json!({})), ["prompt"]);
        assert_eq!(fields(json!({"prompt": 12345678901u64})), ["prompt"]);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let errs = fields(json!({
            "prompt": "short",
            "seed": -1,
            "model": "veo-4",
            "aspect_ratio": "4:3",
            "watermark_text": "ab",
            "colour": "red",
            "bytes_image": "AAAA",
        }));
        for f in [
            "prompt",
            "seed",
            "model",
            "aspect_ratio",
            "watermark_text",
            "colour",
            "bytes_image",
        ] {
            assert!(errs.contains(&f.to_string()), "{f} missing from {errs:?}");
        }
    }

    #[test]
    fn seed_must_fit_in_32_bits() {
        let ok =
            |seed: Value| parse_generate(&json!({"prompt": "a fine prompt", "seed": seed}), STRICT);
        assert_eq!(ok(json!(4294967295u64)).unwrap().seed, Some(u32::MAX));
        assert_eq!(ok(json!(0)).unwrap().seed, Some(0));
        for bad in [json!(4294967296u64), json!(-1), json!(1.5), json!("7")] {
            assert!(ok(bad).is_err());
        }
    }

    #[test]
    fn model_type_is_an_alias_of_model() {
        let req = parse_generate(
            &json!({"prompt": "a fine prompt", "model_type": "veo-3-quality"}),
            STRICT,
        )
        .unwrap();
        assert_eq!(req.model, Model::Veo3Quality);
        assert_eq!(
            fields(
                json!({"prompt": "a fine prompt", "model": "veo-3-fast", "model_type": "veo-3-quality"})
            ),
            ["model_type"]
        );
    }

    #[test]
    fn fingerprint_tells_requests_apart_but_not_spellings() {
        let fp = |body: Value| parse_generate(&body, STRICT).unwrap().fingerprint();
        let base = fp(json!({"prompt": "a fine prompt"}));
        assert_eq!(
            base,
            fp(json!({"prompt": "a fine prompt", "model": "veo-3-fast", "seed": null}))
        );
        assert_ne!(base, fp(json!({"prompt": "a fine prompt", "seed": 0})));
        assert_ne!(base, fp(json!({"prompt": "a fine prompt!"})));
        assert_ne!(
            base,
            fp(json!({"prompt": "a fine prompt", "aspect_ratio": "9:16"}))
        );
    }

    #[test]
    fn nulls_count_as_absent_and_non_objects_are_refused() {
        assert!(
            parse_generate(
                &json!({"prompt": "a fine prompt", "seed": null, "callback_url": null}),
                STRICT
            )
            .is_ok()
        );
        assert_eq!(fields(json!(["prompt"])), ["body"]);
    }
}
