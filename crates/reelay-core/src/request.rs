//! Validation of `POST /v1/veo/generate` bodies (SPEC §1), with one error per bad field.
//!
//! The body is read in one pass straight into the known fields, never into a `serde_json::Value`
//! tree (which can cost ~17× the body in memory): each field's value is kept only as the scalar
//! the rules need, arrays and objects are skipped without being built, and a body with more keys
//! than any valid request could have is refused as soon as the extra key is seen. Fields are
//! then judged one by one, so a client hears about every wrong field at once, by name, with a fix.
//!
//! Image fields are base64-decoded as they are read, straight from the body's text, so a
//! request holds its body and the decoded images — about two copies of each image — and never
//! a third as a string; an image that would decode past the limit is refused before decoding.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use url::Url;

use crate::destination::DestinationPolicy;
use crate::images::{self, ImageError, InputImage};
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
    "filter_text",
];

/// The most keys a body may have: every known field, with room for a few mistakes to report.
const MAX_KEYS: usize = 32;

const MODELS: [&str; 2] = [Model::ALL[0].as_str(), Model::ALL[1].as_str()];
const ASPECTS: [&str; 2] = [AspectRatio::ALL[0].as_str(), AspectRatio::ALL[1].as_str()];

/// The most images `reference_images` may hold (RunBlob: 1–3).
pub const MAX_REFERENCE_IMAGES: usize = 3;

const ONE_MODE: &str = "only one image mode per request: send bytes_image, or start_frame with \
     end_frame, or reference_images";

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
    pub images: ImageInputs,
}

/// The images a request brings, by RunBlob's generation mode: at most one mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImageInputs {
    /// Text to video.
    #[default]
    None,
    /// `bytes_image`: image to video.
    Image(InputImage),
    /// `start_frame` and `end_frame`: a transition from one to the other.
    Frames { start: InputImage, end: InputImage },
    /// `reference_images`: 1–3 images guiding the video (`veo-3-fast` only).
    References(Vec<InputImage>),
}

impl ImageInputs {
    /// The names the images are stored and handed to workers under, in order.
    fn names(&self) -> Vec<String> {
        match self {
            ImageInputs::None => vec![],
            ImageInputs::Image(_) => vec!["image".into()],
            ImageInputs::Frames { .. } => vec!["start_frame".into(), "end_frame".into()],
            ImageInputs::References(list) => {
                (1..=list.len()).map(|n| format!("reference_{n}")).collect()
            }
        }
    }

    /// Each image with its name.
    pub fn into_named(self) -> Vec<(String, InputImage)> {
        let names = self.names();
        let images = match self {
            ImageInputs::None => vec![],
            ImageInputs::Image(i) => vec![i],
            ImageInputs::Frames { start, end } => vec![start, end],
            ImageInputs::References(list) => list,
        };
        names.into_iter().zip(images).collect()
    }
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
        let images = match &self.images {
            ImageInputs::None => vec![],
            ImageInputs::Image(i) => vec![i],
            ImageInputs::Frames { start, end } => vec![start, end],
            ImageInputs::References(list) => list.iter().collect(),
        };
        for (name, image) in self.images.names().iter().zip(images) {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(Sha256::digest(&image.bytes));
        }
        h.finalize().into()
    }
}

/// One reason a request was refused, named after the field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// The API code of this error when it is more precise than `INVALID_PARAMETERS`
    /// (`INVALID_IMAGE`, `IMAGE_TOO_LARGE`, `UNSUPPORTED_IMAGE_FORMAT`).
    pub code: Option<&'static str>,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
            code: None,
        }
    }

    fn image(field: &str, error: ImageError) -> Self {
        Self {
            field: field.to_owned(),
            message: error.message().to_owned(),
            code: Some(error.code()),
        }
    }
}

/// An image field's value, decoded from base64 as it was read.
#[derive(Debug)]
enum ImageValue {
    Null,
    Decoded(Result<Vec<u8>, ImageError>),
    /// Not a string: what it was.
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for ImageValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ImageVisitor)
    }
}

struct ImageVisitor;

impl<'de> Visitor<'de> for ImageVisitor {
    type Value = ImageValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a base64 image")
    }
    fn visit_str<E>(self, v: &str) -> Result<ImageValue, E> {
        Ok(ImageValue::Decoded(images::decode_base64(v)))
    }
    fn visit_unit<E>(self) -> Result<ImageValue, E> {
        Ok(ImageValue::Null)
    }
    fn visit_none<E>(self) -> Result<ImageValue, E> {
        Ok(ImageValue::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<ImageValue, E> {
        Ok(ImageValue::Other("a boolean"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ImageValue, E> {
        Ok(ImageValue::Other("a number"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ImageValue, E> {
        Ok(ImageValue::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ImageValue, E> {
        Ok(ImageValue::Other("a number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ImageValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ImageValue::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ImageValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ImageValue::Other("an object"))
    }
}

/// `reference_images`' value: its first images decoded, and how many it had in all (the rest
/// are skipped unread).
#[derive(Debug)]
enum ImageList {
    Null,
    Items {
        decoded: Vec<ImageValue>,
        total: usize,
    },
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for ImageList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ImageListVisitor)
    }
}

struct ImageListVisitor;

impl<'de> Visitor<'de> for ImageListVisitor {
    type Value = ImageList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of base64 images")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ImageList, A::Error> {
        let mut decoded = Vec::new();
        let mut total = 0;
        loop {
            if decoded.len() < MAX_REFERENCE_IMAGES {
                match seq.next_element::<ImageValue>()? {
                    Some(v) => decoded.push(v),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            total += 1;
        }
        Ok(ImageList::Items { decoded, total })
    }
    fn visit_unit<E>(self) -> Result<ImageList, E> {
        Ok(ImageList::Null)
    }
    fn visit_none<E>(self) -> Result<ImageList, E> {
        Ok(ImageList::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<ImageList, E> {
        Ok(ImageList::Other("a string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<ImageList, E> {
        Ok(ImageList::Other("a boolean"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ImageList, E> {
        Ok(ImageList::Other("a number"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ImageList, E> {
        Ok(ImageList::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ImageList, E> {
        Ok(ImageList::Other("a number"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ImageList, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ImageList::Other("an object"))
    }
}

/// A field's value, as much of it as the rules look at.
#[derive(Debug, Clone, PartialEq)]
enum Loose {
    Null,
    Str(String),
    Unsigned(u64),
    /// Any other JSON value, by what it is ("a boolean", "an array", ...).
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
        Ok(Loose::Other("a boolean"))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::Unsigned(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Loose, E> {
        Ok(Loose::Other("a negative number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Loose, E> {
        Ok(Loose::Other("a fraction"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Loose, E> {
        Ok(Loose::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other("an object"))
    }
}

/// The body's keys: the known ones with their values, and the names of the others.
#[derive(Default)]
struct Fields {
    known: [Option<Loose>; KNOWN_FIELDS.len()],
    seen: [bool; KNOWN_FIELDS.len()],
    /// `bytes_image`, `start_frame`, `end_frame`, by name.
    images: Vec<(&'static str, ImageValue)>,
    references: Option<ImageList>,
    unknown: Vec<String>,
}

impl Fields {
    /// A known field's value; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&Loose> {
        let i = KNOWN_FIELDS.iter().position(|f| *f == name)?;
        self.known[i].as_ref().filter(|v| **v != Loose::Null)
    }

    /// A single-image field's value; `null` counts as absent.
    fn image(&self, name: &str) -> Option<&ImageValue> {
        self.images
            .iter()
            .find(|(n, v)| *n == name && !matches!(v, ImageValue::Null))
            .map(|(_, v)| v)
    }

    fn references(&self) -> Option<&ImageList> {
        self.references
            .as_ref()
            .filter(|v| !matches!(v, ImageList::Null))
    }
}

impl<'de> de::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object like {\"prompt\": \"A sunset over mountains\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let mut keys = 0;
        while let Some(key) = map.next_key::<String>()? {
            keys += 1;
            if keys > MAX_KEYS {
                return Err(de::Error::custom(format_args!(
                    "has more than {MAX_KEYS} keys; the known fields are {}",
                    KNOWN_FIELDS.join(", ")
                )));
            }
            match KNOWN_FIELDS.iter().position(|f| *f == key) {
                Some(i) if fields.seen[i] => {
                    return Err(de::Error::custom(format_args!(
                        "has the field {key:?} twice; send each field once"
                    )));
                }
                Some(i) => {
                    fields.seen[i] = true;
                    match KNOWN_FIELDS[i] {
                        name @ ("bytes_image" | "start_frame" | "end_frame") => {
                            fields.images.push((name, map.next_value()?));
                        }
                        "reference_images" => fields.references = Some(map.next_value()?),
                        _ => fields.known[i] = Some(map.next_value()?),
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    fields.unknown.push(key);
                }
            }
        }
        Ok(fields)
    }
}

/// Validates a request body as sent: JSON text, at most the route's size (checked before).
pub fn parse_generate(
    body: &[u8],
    policy: DestinationPolicy,
) -> Result<GenerateRequest, Vec<FieldError>> {
    let obj: Fields = serde_json::from_slice(body).map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Data => e.to_string(),
            _ => format!("is not valid JSON: {e}"),
        };
        vec![FieldError::new("body", message)]
    })?;
    let mut errors = Vec::new();
    for key in &obj.unknown {
        errors.push(FieldError::new(
            key,
            format!(
                "unknown field; known fields are {}",
                KNOWN_FIELDS.join(", ")
            ),
        ));
    }

    let prompt = match obj.get("prompt") {
        None => {
            errors.push(FieldError::new("prompt", "is required"));
            None
        }
        Some(Loose::Str(p)) => {
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

    let callback_url = match obj.get("callback_url") {
        None => None,
        Some(Loose::Str(u)) => match policy.check_url(u) {
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

    let model = match (obj.get("model"), obj.get("model_type")) {
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

    let aspect_ratio = match obj.get("aspect_ratio") {
        Some(v) => enum_field(&mut errors, "aspect_ratio", v, &ASPECTS),
        None => Some(AspectRatio::Landscape),
    };

    let seed = match obj.get("seed") {
        None => None,
        Some(v) => match v {
            Loose::Unsigned(n) if *n <= u64::from(u32::MAX) => Some(*n as u32),
            _ => {
                errors.push(FieldError::new(
                    "seed",
                    format!("must be an integer from 0 to {}", u32::MAX),
                ));
                None
            }
        },
    };

    let watermark_text = match obj.get("watermark_text") {
        None => None,
        Some(Loose::Str(w)) => {
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

    // RunBlob's content filtering: reelay moderates every prompt, which is `moderate`;
    // it has no translation, so asking for one is refused rather than ignored.
    match obj.get("filter_text") {
        None => {}
        Some(Loose::Str(f)) if f == "moderate" => {}
        Some(Loose::Str(f)) if f == "translate" || f == "moderate_translate" => {
            errors.push(FieldError::new(
                "filter_text",
                "prompt translation is not available on this server; send the prompt in the \
                 language the model takes, with filter_text \"moderate\" or without it",
            ));
        }
        Some(_) => errors.push(FieldError::new(
            "filter_text",
            "must be \"moderate\" (every prompt is moderated); \"translate\" and \
             \"moderate_translate\" are not available",
        )),
    }

    let images = image_inputs(obj, model, &mut errors);

    match (prompt, model, aspect_ratio) {
        (Some(prompt), Some(model), Some(aspect_ratio)) if errors.is_empty() => {
            Ok(GenerateRequest {
                prompt,
                callback_url,
                model,
                aspect_ratio,
                seed,
                watermark_text,
                images,
            })
        }
        _ => Err(errors),
    }
}

/// Judges the image fields: one mode, its fields complete, each image checked
/// ([`images::inspect`]: format, size, one decode).
fn image_inputs(obj: Fields, model: Option<Model>, errors: &mut Vec<FieldError>) -> ImageInputs {
    let single = obj.image("bytes_image").is_some();
    let (start_sent, end_sent) = (
        obj.image("start_frame").is_some(),
        obj.image("end_frame").is_some(),
    );
    let frames = start_sent || end_sent;
    let references = obj.references().is_some();
    let mut modes = 0;
    for (present, field) in [
        (single, "bytes_image"),
        (
            frames,
            if start_sent {
                "start_frame"
            } else {
                "end_frame"
            },
        ),
        (references, "reference_images"),
    ] {
        if present {
            modes += 1;
            if modes > 1 {
                errors.push(FieldError::new(field, ONE_MODE));
            }
        }
    }
    if modes > 1 {
        return ImageInputs::None;
    }
    let Fields {
        images, references, ..
    } = obj;
    let mut taken: Vec<(&str, Option<InputImage>)> = Vec::new();
    for (name, value) in images {
        let judged = judge(name, value, errors);
        taken.push((name, judged));
    }
    let mut take = |name: &str| {
        taken
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, i)| i.take())
    };
    if single {
        return take("bytes_image").map_or(ImageInputs::None, ImageInputs::Image);
    }
    if frames {
        for (sent, missing, name) in [
            (start_sent, !end_sent, "end_frame"),
            (end_sent, !start_sent, "start_frame"),
        ] {
            if sent && missing {
                errors.push(FieldError::new(
                    name,
                    "is required: frame-to-frame needs both start_frame and end_frame",
                ));
            }
        }
        let (start, end) = (take("start_frame"), take("end_frame"));
        return match (start, end) {
            (Some(start), Some(end)) => ImageInputs::Frames { start, end },
            _ => ImageInputs::None,
        };
    }
    match references {
        Some(ImageList::Items { decoded, total }) => {
            if model == Some(Model::Veo3Quality) {
                errors.push(FieldError::new(
                    "reference_images",
                    "works with model veo-3-fast only; send another mode, or model veo-3-fast",
                ));
            }
            if !(1..=MAX_REFERENCE_IMAGES).contains(&total) {
                errors.push(FieldError::new(
                    "reference_images",
                    format!("must hold 1 to {MAX_REFERENCE_IMAGES} images (it has {total})"),
                ));
                return ImageInputs::None;
            }
            let judged: Vec<_> = decoded
                .into_iter()
                .enumerate()
                .map(|(n, v)| judge(&format!("reference_images[{n}]"), v, errors))
                .collect();
            judged
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map_or(ImageInputs::None, ImageInputs::References)
        }
        Some(ImageList::Other(what)) => {
            errors.push(FieldError::new(
                "reference_images",
                format!("must be an array of base64 images, not {what}"),
            ));
            ImageInputs::None
        }
        _ => ImageInputs::None,
    }
}

/// One image field's verdict; `None` (with the reason in `errors`) when it is refused.
fn judge(field: &str, value: ImageValue, errors: &mut Vec<FieldError>) -> Option<InputImage> {
    let checked = match value {
        ImageValue::Null => return None,
        ImageValue::Other(what) => {
            errors.push(FieldError::new(
                field,
                format!("must be a base64 string (a JPEG, PNG or WEBP file), not {what}"),
            ));
            return None;
        }
        ImageValue::Decoded(decoded) => decoded.and_then(images::inspect),
    };
    match checked {
        Ok(image) => Some(image),
        Err(e) => {
            errors.push(FieldError::image(field, e));
            None
        }
    }
}

/// Reads a string field naming one value of an API enum (model, aspect ratio).
fn enum_field<T: std::str::FromStr>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: &Loose,
    allowed: &[&str],
) -> Option<T> {
    let parsed = match value {
        Loose::Str(s) => s.parse::<T>().ok(),
        _ => None,
    };
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
    use serde_json::{Value, json};

    const STRICT: DestinationPolicy = DestinationPolicy {
        allow_insecure: false,
    };

    fn parse(body: Value) -> Result<GenerateRequest, Vec<FieldError>> {
        parse_generate(&serde_json::to_vec(&body).unwrap(), STRICT)
    }

    fn fields(body: Value) -> Vec<String> {
        parse(body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn the_seed_request_is_valid_with_defaults() {
        let req = parse(json!({"prompt": "A sunset over mountains", "callback_url": "https://your-app.com/webhook"}))
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
    fn filter_text_moderate_is_taken_and_translation_refused() {
        assert!(
            parse(json!({"prompt": "A sunset over mountains", "filter_text": "moderate"})).is_ok()
        );
        for refused in [
            json!("translate"),
            json!("moderate_translate"),
            json!("x"),
            json!(1),
        ] {
            assert_eq!(
                fields(json!({"prompt": "A sunset over mountains", "filter_text": refused})),
                ["filter_text"]
            );
        }
    }

    #[test]
    fn prompt_length_is_counted_in_characters() {
        assert_eq!(fields(json!({"prompt": "123456789"})), ["prompt"]);
        assert!(parse(json!({"prompt": "1234567890"})).is_ok());
        assert!(parse(json!({"prompt": "é".repeat(4000)})).is_ok());
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
        let ok = |seed: Value| parse(json!({"prompt": "a fine prompt", "seed": seed}));
        assert_eq!(ok(json!(4294967295u64)).unwrap().seed, Some(u32::MAX));
        assert_eq!(ok(json!(0)).unwrap().seed, Some(0));
        for bad in [json!(4294967296u64), json!(-1), json!(1.5), json!("7")] {
            assert!(ok(bad).is_err());
        }
    }

    #[test]
    fn model_type_is_an_alias_of_model() {
        let req = parse(json!({"prompt": "a fine prompt", "model_type": "veo-3-quality"})).unwrap();
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
        let fp = |body: Value| parse(body).unwrap().fingerprint();
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
            parse(json!({"prompt": "a fine prompt", "seed": null, "callback_url": null})).is_ok()
        );
        assert_eq!(fields(json!(["prompt"])), ["body"]);
    }

    fn raw(body: &str) -> Vec<FieldError> {
        parse_generate(body.as_bytes(), STRICT).unwrap_err()
    }

    #[test]
    fn bodies_that_are_not_one_object_of_few_keys_are_refused_early() {
        let many: String = (0..50_000).map(|i| format!("\"k{i}\":0,")).collect();
        let errs = raw(&format!("{{{many}\"prompt\":\"a fine prompt\"}}"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("more than 32 keys"), "{errs:?}");

        let errs = raw(r#"{"prompt": "a fine prompt", "prompt": "another prompt"}"#);
        assert!(errs[0].message.contains("twice"), "{errs:?}");
        assert_eq!(raw("[0, 0, 0]")[0].field, "body");
        assert!(raw("{\"prompt\": ")[0].message.contains("not valid JSON"));
        assert!(raw("")[0].message.contains("not valid JSON"));
    }

    #[test]
    fn nested_values_are_judged_by_their_kind() {
        let errs = fields(json!({"prompt": {"text": "a fine prompt"}, "seed": [1], "model": true}));
        assert_eq!(errs, ["prompt", "model", "seed"]);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(json!(null)),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|n| json!(n)),
                "[ -~]{0,40}".prop_map(|t| json!(t)),
                Just(json!("A sunset over mountains")),
                Just(json!("https://example.com/hook")),
                Just(json!([1, {"a": [null]}])),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any bytes at all: an answer, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_generate(&body, STRICT);
            }

            /// JSON bodies with known and unknown keys and values of every kind: a request only
            /// when every rule holds, otherwise named errors.
            #[test]
            fn json_bodies_are_accepted_only_when_valid(
                entries in proptest::collection::vec(
                    (
                        proptest::sample::select(vec!["prompt", "seed", "model", "aspect_ratio",
                            "watermark_text", "callback_url", "bytes_image", "colour", ""]),
                        value(),
                    ),
                    0..8,
                )
            ) {
                let body: serde_json::Map<String, Value> =
                    entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                match parse(Value::Object(body.clone())) {
                    Ok(req) => {
                        let n = req.prompt.chars().count();
                        prop_assert!((PROMPT_MIN_CHARS..=PROMPT_MAX_CHARS).contains(&n));
                        prop_assert!(!body.contains_key("colour") && !body.contains_key(""));
                        prop_assert!(body.get("bytes_image").is_none_or(|v| v.is_null()));
                    }
                    Err(errs) => prop_assert!(!errs.is_empty()),
                }
            }
        }
    }
}
