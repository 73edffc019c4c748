//! What gets drawn: everything visual is derived from a SHA-256 of the prompt and seed, so
//! the same request always yields the same picture and different requests visibly differ.
//!
//! Motion is closed-form (a position is a function of the frame number) and uses integers
//! only, so any frame can be drawn on its own and the result never depends on the platform's
//! floating-point or trigonometry implementation.

use sha2::{Digest, Sha256};

use crate::RenderSpec;
use crate::font::{self, GLYPH_HEIGHT};
use crate::frame::{Canvas, Rgb};

/// Bumping this changes every rendered video; do so only on purpose.
const HASH_DOMAIN: &[u8] = b"reelay-render/scene/v1";
/// How many characters of the prompt are written along the bottom.
const CAPTION_CHARS: usize = 24;
/// Gap between the picture's edge and the caption or watermark boxes.
const MARGIN: i32 = 4;
/// Gap between a text box's edge and its text.
const PADDING: i32 = 2;
/// Opacity of the dark boxes behind text (out of 255).
const TEXT_BOX_ALPHA: u8 = 160;

/// A deterministic byte stream: SHA-256 of (`key`, block counter), as many blocks as needed.
/// One digest is only 32 bytes, and the scene needs more than that.
struct HashStream {
    key: [u8; 32],
    block: [u8; 32],
    counter: u32,
    used: usize,
}

impl HashStream {
    fn new(spec: &RenderSpec<'_>) -> Self {
        // The seed has a fixed width, so (seed, prompt) pairs cannot collide by concatenation.
        let key: [u8; 32] = Sha256::new()
            .chain_update(HASH_DOMAIN)
            .chain_update(spec.seed.to_le_bytes())
            .chain_update(spec.prompt.as_bytes())
            .finalize()
            .into();
        Self {
            key,
            block: [0; 32],
            counter: 0,
            used: 32,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.used == self.block.len() {
            self.block = Sha256::new()
                .chain_update(self.key)
                .chain_update(self.counter.to_le_bytes())
                .finalize()
                .into();
            self.counter += 1;
            self.used = 0;
        }
        self.used += 1;
        self.block[self.used - 1]
    }

    /// A value in `lo..=hi` (the modulo bias of a 16-bit draw is irrelevant here).
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        let draw = i32::from(u16::from_le_bytes([self.byte(), self.byte()]));
        lo + draw % (hi - lo + 1)
    }

    /// A non-zero value in `-max..=max`.
    fn velocity(&mut self, max: i32) -> i32 {
        let speed = self.range(1, max);
        if self.byte() & 1 == 0 { speed } else { -speed }
    }

    fn colour(&mut self, lo: u8, hi: u8) -> Rgb {
        let mut channel = || self.range(i32::from(lo), i32::from(hi)) as u8;
        Rgb::new(channel(), channel(), channel())
    }
}

#[derive(Clone, Copy, Debug)]
enum ShapeKind {
    Circle,
    Square,
}

/// A shape bouncing around the picture in a straight line.
#[derive(Clone, Copy, Debug)]
struct Shape {
    kind: ShapeKind,
    colour: Rgb,
    /// Radius of a circle, half the side of a square.
    size: i32,
    start: (i32, i32),
    velocity: (i32, i32),
}

/// Everything needed to draw any frame of one video.
pub(crate) struct Scene<'a> {
    width: i32,
    height: i32,
    gradient_from: Rgb,
    gradient_to: Rgb,
    /// Direction of the gradient (x and y weights, each -2..=2, not both zero).
    gradient_direction: (i32, i32),
    shapes: Vec<Shape>,
    /// Colour of the progress bar along the bottom edge.
    accent: Rgb,
    caption: String,
    watermark: Option<String>,
    first_frame: Option<&'a [u8]>,
    last_frame: Option<&'a [u8]>,
}

impl<'a> Scene<'a> {
    pub fn new(spec: &RenderSpec<'a>, width: usize, height: usize) -> Self {
        let (width, height) = (width as i32, height as i32);
        let mut hash = HashStream::new(spec);

        // Dark to light, so the gradient is always visible.
        let gradient_from = hash.colour(16, 112);
        let gradient_to = hash.colour(144, 240);
        let gradient_direction = loop {
            let direction = (hash.range(-2, 2), hash.range(-2, 2));
            if direction != (0, 0) {
                break direction;
            }
        };

        let short_side = width.min(height);
        let shape_count = hash.range(3, 6);
        let shapes = (0..shape_count)
            .map(|_| {
                let kind = if hash.byte() & 1 == 0 {
                    ShapeKind::Circle
                } else {
                    ShapeKind::Square
                };
                Shape {
                    kind,
                    colour: hash.colour(0, 255),
                    size: hash.range(short_side / 18, short_side / 6),
                    start: (hash.range(0, width - 1), hash.range(0, height - 1)),
                    velocity: (hash.velocity(4), hash.velocity(4)),
                }
            })
            .collect();

        let accent = hash.colour(128, 255);

        let (mut caption, cut) = collapse_whitespace(spec.prompt, CAPTION_CHARS);
        if cut {
            caption.push_str("...");
        }
        let watermark_chars = (width - 2 * MARGIN - 2 * PADDING + 1) / font::ADVANCE;
        let watermark = spec
            .watermark_text
            .map(|text| collapse_whitespace(text, watermark_chars.max(0) as usize).0)
            .filter(|text| !text.is_empty());

        Self {
            width,
            height,
            gradient_from,
            gradient_to,
            gradient_direction,
            shapes,
            accent,
            caption,
            watermark,
            first_frame: spec.first_frame,
            last_frame: spec.last_frame,
        }
    }

    /// Draws frame `index` of `frame_count` onto `canvas` (which must match the scene's size).
    pub fn draw(&self, canvas: &mut Canvas, index: u32, frame_count: u32) {
        debug_assert_eq!(
            (canvas.width(), canvas.height()),
            (self.width as usize, self.height as usize)
        );
        let t = index as i32;
        // How far from the first frame to the last, 0 to 255.
        let fade = (index * 255 / frame_count.saturating_sub(1).max(1)).min(255) as u8;
        match (self.first_frame, self.last_frame) {
            (Some(first), Some(last)) => {
                let w = self.width as usize;
                canvas.fill_with(|x, y| {
                    let at = (y as usize * w + x as usize) * 3;
                    let (a, b) = (&first[at..at + 3], &last[at..at + 3]);
                    Rgb::new(a[0], a[1], a[2]).mix(Rgb::new(b[0], b[1], b[2]), fade)
                });
            }
            (first, _) => {
                self.draw_background(canvas);
                for shape in &self.shapes {
                    self.draw_shape(canvas, shape, t);
                }
                if let Some(first) = first {
                    canvas.blend_picture(first, 255 - fade);
                }
            }
        }
        self.draw_text_overlays(canvas);

        // A progress bar makes the motion obvious even where the shapes are slow.
        let done = self.width * (t + 1) / frame_count.max(1) as i32;
        canvas.fill_rect(0, self.height - 2, done, 2, self.accent);
    }

    /// A still two-colour gradient. It deliberately does not move: the encoder copies
    /// unchanged blocks from the previous frame, and a slowly drifting shallow gradient shows
    /// up as a blocky mosaic after that copying.
    fn draw_background(&self, canvas: &mut Canvas) {
        let (dx, dy) = self.gradient_direction;
        // Shift the projection so it runs from 0 at one corner to `span` at the opposite one.
        let offset = (self.width - 1) * (-dx).max(0) + (self.height - 1) * (-dy).max(0);
        let span = ((self.width - 1) * dx.abs() + (self.height - 1) * dy.abs()).max(1);
        canvas.fill_with(|x, y| {
            let amount = (x * dx + y * dy + offset) * 255 / span;
            self.gradient_from.mix(self.gradient_to, amount as u8)
        });
    }

    fn draw_shape(&self, canvas: &mut Canvas, shape: &Shape, t: i32) {
        let x = bounce(shape.start.0, shape.velocity.0, t, self.width - 1);
        let y = bounce(shape.start.1, shape.velocity.1, t, self.height - 1);
        match shape.kind {
            ShapeKind::Circle => canvas.fill_circle(x, y, shape.size, shape.colour),
            ShapeKind::Square => {
                let side = 2 * shape.size + 1;
                canvas.fill_rect(x - shape.size, y - shape.size, side, side, shape.colour);
            }
        }
    }

    /// The prompt caption along the bottom and the watermark in the top-right corner, each
    /// on a translucent dark box so they stay legible on any background.
    fn draw_text_overlays(&self, canvas: &mut Canvas) {
        let box_height = GLYPH_HEIGHT + 2 * PADDING;
        let labels = [
            Some((&self.caption, false)),
            self.watermark.as_ref().map(|text| (text, true)),
        ];
        for (text, top_right) in labels.into_iter().flatten() {
            if text.is_empty() {
                continue;
            }
            let box_width = font::text_width(text.chars().count()) + 2 * PADDING;
            let (x, y) = if top_right {
                (self.width - MARGIN - box_width, MARGIN)
            } else {
                // Leave room for the 2-pixel progress bar below the caption.
                (MARGIN, self.height - MARGIN - 2 - box_height)
            };
            canvas.blend_rect(x, y, box_width, box_height, Rgb::BLACK, TEXT_BOX_ALPHA);
            font::draw_text(canvas, x + PADDING, y + PADDING, text, Rgb::WHITE);
        }
    }
}

/// Collapses whitespace runs (newlines, tabs) into single spaces and keeps at most
/// `max_chars` characters; the flag says whether anything was cut off. It stops reading as
/// soon as it has enough, so a huge prompt costs nothing here.
fn collapse_whitespace(text: &str, max_chars: usize) -> (String, bool) {
    let mut chars = text
        .split_whitespace()
        .flat_map(|word| std::iter::once(' ').chain(word.chars()))
        .skip(1);
    let kept = chars.by_ref().take(max_chars).collect();
    (kept, chars.next().is_some())
}

/// Position at time `t` of a point moving from `start` at `velocity` per frame and bouncing
/// between 0 and `max` (a triangle wave, so no per-frame state is needed).
fn bounce(start: i32, velocity: i32, t: i32, max: i32) -> i32 {
    if max <= 0 {
        return 0;
    }
    let period = 2 * max;
    let position = (start + velocity * t).rem_euclid(period);
    if position > max {
        period - position
    } else {
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AspectRatio;

    fn spec(prompt: &str, seed: u32) -> RenderSpec<'_> {
        RenderSpec {
            prompt,
            seed,
            aspect_ratio: AspectRatio::Landscape16x9,
            watermark_text: Some("reelay"),
            first_frame: None,
            last_frame: None,
        }
    }

    fn draw(spec: &RenderSpec<'_>, index: u32) -> Canvas {
        let mut canvas = Canvas::new(320, 180);
        Scene::new(spec, 320, 180).draw(&mut canvas, index, 48);
        canvas
    }

    fn same(a: &Canvas, b: &Canvas) -> bool {
        (0..a.height()).all(|y| (0..a.width()).all(|x| a.pixel(x, y) == b.pixel(x, y)))
    }

    #[test]
    fn bounce_stays_in_bounds_and_reflects() {
        assert_eq!(bounce(5, 3, 0, 10), 5);
        assert_eq!(bounce(5, 3, 2, 10), 9);
        assert_eq!(bounce(5, 3, 3, 10), 6);
        assert_eq!(bounce(5, -3, 2, 10), 1);
        assert_eq!(bounce(5, -3, 3, 10), 4);
        for t in 0..1000 {
            assert!((0..=10).contains(&bounce(7, -4, t, 10)));
        }
    }

    #[test]
    fn frames_are_deterministic_and_animated() {
        let spec = spec("a cat", 1);
        assert!(same(&draw(&spec, 10), &draw(&spec, 10)));
        assert!(!same(&draw(&spec, 0), &draw(&spec, 47)));
    }

    #[test]
    fn prompt_and_seed_change_the_picture() {
        let base = draw(&spec("a cat", 1), 0);
        assert!(!same(&base, &draw(&spec("a cat", 2), 0)));
        assert!(!same(&base, &draw(&spec("a dog", 1), 0)));
    }

    #[test]
    fn caption_is_truncated_and_watermark_fits() {
        let long = "x".repeat(100);
        let mut spec = spec(&long, 1);
        let wide = "W".repeat(200);
        spec.watermark_text = Some(&wide);
        let scene = Scene::new(&spec, 180, 320);
        assert_eq!(scene.caption, format!("{}...", "x".repeat(CAPTION_CHARS)));
        let watermark = scene.watermark.expect("watermark");
        let box_width = font::text_width(watermark.chars().count()) + 2 * PADDING;
        assert!(box_width + 2 * MARGIN <= 180, "{box_width}");
        assert!(watermark.len() > 20);
    }

    #[test]
    fn whitespace_is_collapsed_and_text_cut() {
        assert_eq!(
            collapse_whitespace("  a \n\t b  ", 10),
            ("a b".into(), false)
        );
        assert_eq!(collapse_whitespace("abc def", 3), ("abc".into(), true));
        assert_eq!(collapse_whitespace("abc", 3), ("abc".into(), false));
        assert_eq!(collapse_whitespace("", 3), (String::new(), false));
    }

    #[test]
    fn blank_watermark_is_not_drawn() {
        let mut spec = spec("a\n\tcat", 1);
        spec.watermark_text = Some("  ");
        let scene = Scene::new(&spec, 320, 180);
        assert!(scene.watermark.is_none());
        assert_eq!(scene.caption, "a cat");
    }
}
