//! [`Canvas`]: plotters' bitmap backend with its text drawn by this module. plotters 0.3.7's
//! ab_glyph renderer places each glyph's outline at the pen position without its left side
//! bearing, so letters with a large bearing crowd their neighbours ("circles" reads "circdes",
//! "4, 1000" reads "4,1000"). Every picture the project writes goes through this backend, which
//! lays text out with the font's advances, kerning and bearings.

use std::path::Path;
use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// The embedded sans-serif font: Ubuntu Light from the epaint_default_fonts crate (Ubuntu font
/// licence), so pictures render the same on any machine.
static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).expect("embedded font parses")
});

/// One line of text laid out at pixel size `size`: its covered pixels (x, y, coverage) relative
/// to the top-left of its box, and the box's width and height.
pub struct Layout {
    /// Covered pixels and their coverage in (0, 1].
    pub pixels: Vec<(i32, i32, f32)>,
    /// Advance width in pixels.
    pub width: i32,
    /// Ascent minus descent in pixels.
    pub height: i32,
}

/// Lays out `text` on one line: pen advances, kerning, and each outline at its own bounds.
pub fn layout(text: &str, size: f64) -> Layout {
    let font = FONT.as_scaled(PxScale::from(size as f32));
    let ascent = font.ascent();
    let mut caret = 0.0f32;
    let mut prev = None;
    let mut pixels = Vec::new();
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            caret += font.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(font.scale(), point(caret, ascent));
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|x, y, cov| {
                if cov > 0.0 {
                    pixels.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, cov));
                }
            });
        }
        caret += font.h_advance(id);
    }
    Layout {
        pixels,
        width: caret.ceil() as i32,
        height: (font.ascent() - font.descent()).ceil() as i32,
    }
}

/// Draws `text` into `img` in `color`, its box's top edge at `top` and centred on `centre_x`
/// (clipped at the image's edges).
pub fn draw_text_rgb(
    img: &mut image::RgbImage,
    text: &str,
    size: f64,
    centre_x: i32,
    top: i32,
    color: [u8; 3],
) {
    let l = layout(text, size);
    let x0 = centre_x - l.width / 2;
    let (w, h) = (img.width() as i32, img.height() as i32);
    for (x, y, cov) in l.pixels {
        let (x, y) = (x0 + x, top + y);
        if x < 0 || y < 0 || x >= w || y >= h {
            continue;
        }
        let a = cov.min(1.0);
        let p = img.get_pixel_mut(x as u32, y as u32);
        for (ch, &c) in p.0.iter_mut().zip(&color) {
            *ch = (*ch as f32 * (1.0 - a) + c as f32 * a).round() as u8;
        }
    }
}

/// A PNG bitmap (written on `present`) whose text is drawn by [`layout`].
pub struct Canvas<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> Canvas<'a> {
    /// A `width` x `height` picture to be written to `path`.
    pub fn new(path: &'a Path, size: (u32, u32)) -> Self {
        Self {
            inner: BitMapBackend::new(path, size),
        }
    }
}

type Err<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), Err<'a>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), Err<'a>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> Result<(), Err<'a>> {
        self.inner.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_rect(a, b, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (w, h): (u32, u32),
        src: &[u8],
    ) -> Result<(), Err<'a>> {
        self.inner.blit_bitmap(pos, (w, h), src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), Err<'a>> {
        let l = layout(text, style.size());
        Ok((l.width.max(0) as u32, l.height.max(0) as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), Err<'a>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let l = layout(text, style.size());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -l.width,
            HPos::Center => -l.width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -l.height / 2,
            VPos::Bottom => -l.height,
        };
        let trans = style.transform();
        for (x, y, cov) in l.pixels {
            let (x, y) = trans.transform(x + dx, y + dy);
            let c = BackendColor {
                alpha: color.alpha * cov.min(1.0) as f64,
                rgb: color.rgb,
            };
            self.inner.draw_pixel((pos.0 + x, pos.1 + y), c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ink columns of a laid-out string, left to right.
    fn ink_columns(text: &str) -> Vec<i32> {
        let mut cols: Vec<i32> = layout(text, 40.0)
            .pixels
            .iter()
            .filter(|p| p.2 > 0.5)
            .map(|p| p.0)
            .collect();
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    /// The letters of "cl" stay apart: an empty column lies between the c and the l (plotters'
    /// own renderer drew them touching, so "circles" read "circdes").
    #[test]
    fn adjacent_letters_keep_their_gap() {
        let cols = ink_columns("cl");
        let gaps = cols.windows(2).filter(|w| w[1] - w[0] > 1).count();
        assert_eq!(gaps, 1, "columns {cols:?}");
    }

    /// A space after a comma is as wide as a space elsewhere, and wider than 1/5 em.
    #[test]
    fn a_space_after_a_comma_is_a_full_space() {
        let w = |s: &str| layout(s, 40.0).width;
        let space = w("4, 1") - w("4,1");
        // Widths are rounded up to whole pixels, so differences agree within one.
        assert!((space - (w("4 1") - w("41"))).abs() <= 1);
        assert!(space as f64 > 0.2 * 40.0 * 0.8, "space {space} px");
    }

    /// Width is additive up to kerning and rounding, and the height is the font's line height.
    #[test]
    fn layout_width_and_height_are_consistent() {
        let (a, b, ab) = (layout("MMD", 20.0), layout("x", 20.0), layout("MMDx", 20.0));
        assert!((ab.width - a.width - b.width).abs() <= 2);
        assert!(a.height >= 20 && a.height <= 30, "height {}", a.height);
        // Every pixel lies inside the box (bearings included).
        for p in &ab.pixels {
            assert!(
                p.0 >= -2 && p.0 <= ab.width + 2 && p.1 >= 0 && p.1 <= ab.height,
                "{p:?}"
            );
        }
    }
}
