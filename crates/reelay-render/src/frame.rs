//! Pixel buffers and the few drawing primitives the scene needs.
//!
//! Drawing happens on an RGB [`Canvas`] because colours, blending and text are easiest to
//! reason about there; [`YuvFrame`] is the I420 (yuv420p) copy the H.264 encoder consumes.
//! Everything is integer arithmetic so a frame is bit-identical on every platform, which is
//! what makes the rendered MP4 deterministic.

use openh264::formats::YUVSource;

/// An 8-bit sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rgb {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Rgb {
    pub const BLACK: Rgb = Rgb::new(0, 0, 0);
    pub const WHITE: Rgb = Rgb::new(255, 255, 255);

    pub const fn new(r: u8, g: u8, b: u8) -> Self {
        Self { r, g, b }
    }

    /// Mixes `self` towards `other`: `amount` 0 keeps `self`, 255 gives `other`.
    pub fn mix(self, other: Rgb, amount: u8) -> Rgb {
        let channel = |a: u8, b: u8| -> u8 {
            let (a, b, t) = (u32::from(a), u32::from(b), u32::from(amount));
            // Rounded integer lerp; the result always lies between a and b, so it fits a u8.
            ((a * (255 - t) + b * t + 127) / 255) as u8
        };
        Rgb::new(
            channel(self.r, other.r),
            channel(self.g, other.g),
            channel(self.b, other.b),
        )
    }
}

/// An RGB picture the scene draws into. Coordinates are signed so shapes may hang off the
/// edges; everything outside the picture is clipped.
pub(crate) struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![Rgb::BLACK; width * height],
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    #[cfg(test)]
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        self.pixels[y * self.width + x]
    }

    /// Sets every pixel from a function of its position (used for the background).
    pub fn fill_with(&mut self, mut colour_at: impl FnMut(i32, i32) -> Rgb) {
        for (y, row) in self.pixels.chunks_exact_mut(self.width).enumerate() {
            for (x, pixel) in row.iter_mut().enumerate() {
                *pixel = colour_at(x as i32, y as i32);
            }
        }
    }

    /// Blends an RGB8 picture of the canvas's size over it with opacity `alpha`.
    pub fn blend_picture(&mut self, rgb: &[u8], alpha: u8) {
        for (pixel, px) in self.pixels.iter_mut().zip(rgb.chunks_exact(3)) {
            *pixel = pixel.mix(Rgb::new(px[0], px[1], px[2]), alpha);
        }
    }

    /// Blends `colour` over the rectangle with opacity `alpha` (255 = opaque); clipped.
    pub fn blend_rect(&mut self, x: i32, y: i32, w: i32, h: i32, colour: Rgb, alpha: u8) {
        let (x0, x1) = clip(x, w, self.width);
        let (y0, y1) = clip(y, h, self.height);
        for py in y0..y1 {
            let row = &mut self.pixels[py * self.width..(py + 1) * self.width];
            for pixel in &mut row[x0..x1] {
                *pixel = pixel.mix(colour, alpha);
            }
        }
    }

    pub fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, colour: Rgb) {
        self.blend_rect(x, y, w, h, colour, 255);
    }

    /// Fills a disc centred on (`cx`, `cy`); clipped.
    pub fn fill_circle(&mut self, cx: i32, cy: i32, radius: i32, colour: Rgb) {
        // `+ radius` rounds the outline a little so small discs do not look diamond-shaped.
        let limit = radius * radius + radius;
        for dy in -radius..=radius {
            // Draw each scanline as one rectangle instead of testing every pixel.
            let mut half = radius;
            while half > 0 && half * half + dy * dy > limit {
                half -= 1;
            }
            self.fill_rect(cx - half, cy + dy, 2 * half + 1, 1, colour);
        }
    }
}

/// Clips the span [`start`, `start + len`) to [0, `limit`) and returns it as indices.
fn clip(start: i32, len: i32, limit: usize) -> (usize, usize) {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let lo = i64::from(start).clamp(0, limit);
    let hi = (i64::from(start) + i64::from(len.max(0))).clamp(0, limit);
    (lo as usize, hi as usize)
}

/// An I420 picture: full-resolution luma, chroma subsampled 2x2. Width and height must be
/// even, which every [`crate::AspectRatio`] guarantees.
pub(crate) struct YuvFrame {
    width: usize,
    height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl YuvFrame {
    pub fn new(width: usize, height: usize) -> Self {
        assert!(
            width.is_multiple_of(2) && height.is_multiple_of(2),
            "I420 needs even dimensions, got {width}x{height}"
        );
        let chroma = (width / 2) * (height / 2);
        Self {
            width,
            height,
            y: vec![0; width * height],
            u: vec![128; chroma],
            v: vec![128; chroma],
        }
    }

    /// Converts `canvas` (same size) with BT.601 limited-range coefficients, the colour space
    /// the encoder signals in the stream. Chroma is taken from the average of each 2x2 block.
    pub fn copy_from(&mut self, canvas: &Canvas) {
        assert_eq!((canvas.width, canvas.height), (self.width, self.height));
        for (pixel, luma) in canvas.pixels.iter().zip(&mut self.y) {
            let (r, g, b) = (i32::from(pixel.r), i32::from(pixel.g), i32::from(pixel.b));
            *luma = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
        let half_width = self.width / 2;
        for cy in 0..self.height / 2 {
            for cx in 0..half_width {
                let (mut r, mut g, mut b) = (0, 0, 0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = canvas.pixels[(2 * cy + dy) * self.width + 2 * cx + dx];
                    r += i32::from(p.r);
                    g += i32::from(p.g);
                    b += i32::from(p.b);
                }
                // Sums of four pixels: divide by 4 inside the fixed-point shift (8 + 2 bits).
                let index = cy * half_width + cx;
                self.u[index] = (((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128) as u8;
                self.v[index] = (((112 * r - 94 * g - 18 * b + 512) >> 10) + 128) as u8;
            }
        }
    }

    #[cfg(test)]
    pub fn luma(&self) -> &[u8] {
        &self.y
    }
}

impl YUVSource for YuvFrame {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_is_clipped_to_the_canvas() {
        let mut canvas = Canvas::new(8, 6);
        canvas.fill_rect(-5, -5, 100, 100, Rgb::WHITE);
        canvas.fill_circle(7, 5, 10, Rgb::new(1, 2, 3));
        canvas.fill_rect(20, 20, 4, 4, Rgb::BLACK);
        assert_eq!(canvas.pixel(0, 0), Rgb::new(1, 2, 3));
    }

    #[test]
    fn circle_is_round_and_centred() {
        let mut canvas = Canvas::new(21, 21);
        canvas.fill_circle(10, 10, 5, Rgb::WHITE);
        assert_eq!(canvas.pixel(10, 10), Rgb::WHITE);
        assert_eq!(canvas.pixel(15, 10), Rgb::WHITE);
        assert_eq!(canvas.pixel(10, 5), Rgb::WHITE);
        assert_eq!(canvas.pixel(16, 10), Rgb::BLACK);
        assert_eq!(
            canvas.pixel(14, 14),
            Rgb::BLACK,
            "corner of the bounding box"
        );
    }

    #[test]
    fn mix_hits_both_ends() {
        let a = Rgb::new(10, 20, 30);
        let b = Rgb::new(250, 0, 128);
        assert_eq!(a.mix(b, 0), a);
        assert_eq!(a.mix(b, 255), b);
    }

    #[test]
    fn yuv_conversion_matches_bt601_limited_range() {
        let mut canvas = Canvas::new(4, 2);
        canvas.fill_rect(0, 0, 2, 2, Rgb::WHITE);
        canvas.fill_rect(2, 0, 2, 2, Rgb::BLACK);
        let mut frame = YuvFrame::new(4, 2);
        frame.copy_from(&canvas);
        assert_eq!(frame.y(), &[235, 235, 16, 16, 235, 235, 16, 16]);
        assert_eq!(frame.u(), &[128, 128]);
        assert_eq!(frame.v(), &[128, 128]);
    }
}
