//! Image inputs of a create request (RunBlob's `bytes_image`, `start_frame` + `end_frame`,
//! `reference_images`): what an image must be to be accepted, judged from its bytes alone.
//!
//! The format is read from the bytes (a PNG named JPEG is a PNG); the header is read first, so
//! a decompression bomb is refused by its declared size before a pixel is decoded; then the
//! image is decoded once, within a memory limit, so a truncated or corrupt file is refused at
//! creation instead of failing the task minutes later.

use std::io::Cursor;

/// The largest image accepted, decoded from base64 (RunBlob's "max 20 MB").
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// The most pixels an image may have: 16.8 megapixels, a 4096 × 4096 square or a 5,472 ×
/// 3,078 photo; far above what a video model uses, and a bound on the decode's memory.
pub const MAX_IMAGE_PIXELS: u64 = 4096 * 4096;
/// The longest side an image may have.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Memory one decode may take: the pixel cap at 8 bytes a pixel (16-bit RGBA), the worst.
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 8;

/// The formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    pub const fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
        }
    }

    pub const fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }

    fn of(format: image::ImageFormat) -> Option<Self> {
        match format {
            image::ImageFormat::Jpeg => Some(ImageFormat::Jpeg),
            image::ImageFormat::Png => Some(ImageFormat::Png),
            image::ImageFormat::WebP => Some(ImageFormat::Webp),
            _ => None,
        }
    }

    fn image(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp]
            .into_iter()
            .find(|f| f.extension() == s)
            .ok_or(())
    }
}

/// An image that passed every check.
#[derive(Clone, PartialEq, Eq)]
pub struct InputImage {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for InputImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InputImage({:?} {}x{}, {} bytes)",
            self.format,
            self.width,
            self.height,
            self.bytes.len()
        )
    }
}

/// Why an image was refused; each kind has its API code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Not base64, not an image, or a damaged one: `INVALID_IMAGE`.
    Invalid(String),
    /// Over the byte or pixel limit: `IMAGE_TOO_LARGE`.
    TooLarge(String),
    /// An image, but not JPEG, PNG or WEBP: `UNSUPPORTED_IMAGE_FORMAT`.
    Unsupported(String),
}

impl ImageError {
    pub const fn code(&self) -> &'static str {
        match self {
            ImageError::Invalid(_) => "INVALID_IMAGE",
            ImageError::TooLarge(_) => "IMAGE_TOO_LARGE",
            ImageError::Unsupported(_) => "UNSUPPORTED_IMAGE_FORMAT",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ImageError::Invalid(m) | ImageError::TooLarge(m) | ImageError::Unsupported(m) => m,
        }
    }
}

/// Decodes a base64 image as sent (optionally as a `data:` URL, whose declared type is
/// ignored), refusing one that would decode past [`MAX_IMAGE_BYTES`] before decoding it.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ImageError> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let text = match text.strip_prefix("data:") {
        Some(url) => url.split_once(";base64,").map_or(url, |(_, data)| data),
        None => text,
    };
    let decoded_len = text.trim_end_matches('=').len() / 4 * 3;
    if decoded_len > MAX_IMAGE_BYTES {
        return Err(too_large_bytes(decoded_len));
    }
    let bytes = LENIENT.decode(text).map_err(|e| {
        ImageError::Invalid(format!(
            "is not valid base64 ({e}); send the file's bytes base64-encoded"
        ))
    })?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(too_large_bytes(bytes.len()));
    }
    Ok(bytes)
}

fn too_large_bytes(n: usize) -> ImageError {
    ImageError::TooLarge(format!(
        "is {n} bytes; an image may have at most {MAX_IMAGE_BYTES} bytes (20 MiB)"
    ))
}

/// Judges an image from its bytes: its format, its declared size, then one decode.
pub fn inspect(bytes: Vec<u8>) -> Result<InputImage, ImageError> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(too_large_bytes(bytes.len()));
    }
    let format = match image::guess_format(&bytes) {
        Ok(found) => ImageFormat::of(found).ok_or_else(|| {
            ImageError::Unsupported(format!(
                "is a {} image; send JPEG, PNG or WEBP",
                found
                    .extensions_str()
                    .first()
                    .unwrap_or(&"other")
                    .to_uppercase()
            ))
        })?,
        Err(_) => {
            return Err(ImageError::Invalid(
                "is not an image: its bytes are not JPEG, PNG or WEBP".into(),
            ));
        }
    };
    let damaged = |e: image::ImageError| {
        ImageError::Invalid(format!(
            "is not a readable {} image ({e}); send the whole, undamaged file",
            format.extension().to_uppercase()
        ))
    };
    let reader = || image::ImageReader::with_format(Cursor::new(&bytes[..]), format.image());
    let (width, height) = reader().into_dimensions().map_err(damaged)?;
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(ImageError::TooLarge(format!(
            "is {width} × {height} pixels; an image may have at most {MAX_IMAGE_PIXELS} \
             pixels (4096 × 4096) and {MAX_IMAGE_SIDE} on a side"
        )));
    }
    let mut decoding = reader();
    decoding.limits(decode_limits());
    decoding.decode().map_err(damaged)?;
    Ok(InputImage {
        format,
        width,
        height,
        bytes,
    })
}

/// What one decode may take: the side and memory caps, the same at creation and at render.
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// An accepted image's pixels scaled to cover `width` × `height` and centre-cropped, as a
/// renderer takes a frame: RGB8, row by row.
pub fn fit_rgb(bytes: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(decode_limits());
    let image = reader.decode().map_err(|e| e.to_string())?;
    Ok(image
        .resize_to_fill(width, height, image::imageops::FilterType::Triangle)
        .to_rgb8()
        .into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 30]))
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(width, height, image::Rgb([30, 200, 30]))
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    /// A PNG that declares `width` × `height` in its header, with almost no pixel data: what a
    /// decompression bomb looks like before it is inflated.
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut header = [0u8; 13];
        header[..4].copy_from_slice(&width.to_be_bytes());
        header[4..8].copy_from_slice(&height.to_be_bytes());
        header[8] = 8; // bit depth
        header[9] = 2; // RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (b"IHDR", &header[..]),
            (b"IDAT", &b"\x78\x9c\x03\x00\x00\x00\x00\x01"[..]),
            (b"IEND", &[][..]),
        ] {
            out.extend((data.len() as u32).to_be_bytes());
            let mut chunk = kind.to_vec();
            chunk.extend(data);
            out.extend(&chunk);
            out.extend(crc32(&chunk).to_be_bytes());
        }
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn formats_come_from_the_bytes() {
        let p = inspect(png(64, 48)).unwrap();
        assert_eq!((p.format, p.width, p.height), (ImageFormat::Png, 64, 48));
        let j = inspect(jpeg(32, 16)).unwrap();
        assert_eq!((j.format, j.width, j.height), (ImageFormat::Jpeg, 32, 16));
    }

    #[test]
    fn each_refusal_has_its_code() {
        let code = |r: Result<InputImage, ImageError>| r.unwrap_err().code();
        assert_eq!(
            code(inspect(b"hello, not an image".to_vec())),
            "INVALID_IMAGE"
        );
        assert_eq!(
            code(inspect(b"GIF89a\x01\x00\x01\x00".to_vec())),
            "UNSUPPORTED_IMAGE_FORMAT"
        );
        let full = png(64, 64);
        assert_eq!(
            code(inspect(full[..full.len() - 30].to_vec())),
            "INVALID_IMAGE"
        );
        assert_eq!(code(inspect(png_header(30_000, 30_000))), "IMAGE_TOO_LARGE");
        assert_eq!(code(inspect(png_header(9_000, 10))), "IMAGE_TOO_LARGE");
        assert_eq!(
            code(inspect(vec![0; MAX_IMAGE_BYTES + 1])),
            "IMAGE_TOO_LARGE"
        );
    }

    #[test]
    fn base64_is_decoded_with_or_without_a_data_url() {
        use base64::Engine as _;
        let bytes = png(8, 8);
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(decode_base64(&text).unwrap(), bytes);
        let url = format!("data:image/jpeg;base64,{text}");
        assert_eq!(
            decode_base64(&url).unwrap(),
            bytes,
            "the declared type is ignored"
        );
        assert_eq!(
            decode_base64("not base64!").unwrap_err().code(),
            "INVALID_IMAGE"
        );
        let huge = "A".repeat((MAX_IMAGE_BYTES + 3) / 3 * 4 + 4);
        assert_eq!(decode_base64(&huge).unwrap_err().code(), "IMAGE_TOO_LARGE");
    }
}
