//! What a display of the fake device shows, drawn fresh for every frame as
//! an I420 picture: a background colour of the display's own, the
//! device's id, the display's number and resolution, a running clock,
//! how many touches arrived, and a marker where the last one landed. So a
//! person looking at two displays tells them apart, sees the picture is
//! live, and sees that their click arrived.

use std::time::SystemTime;

/// One background per display number (Y, U, V), repeating after six:
/// blue, green, red, purple, teal, orange, dark enough for white text.
const BACKGROUNDS: [(u8, u8, u8); 6] = [
    (60, 170, 110),
    (90, 100, 80),
    (70, 110, 190),
    (70, 160, 160),
    (95, 140, 90),
    (110, 80, 180),
];

const WHITE: u8 = 235;
const MARKER: (u8, u8, u8) = (210, 16, 146);

/// A touch to mark: where, in the display's own coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    pub x: u32,
    pub y: u32,
}

/// What input changed on a display: how many presses, and where the
/// last one is (a drag moves it).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub touches: u64,
    pub last_touch: Option<Touch>,
    pressed: bool,
}

impl State {
    /// A touch down (or a drag while down) at `at`: a new press counts.
    pub fn press(&mut self, at: Touch) {
        if !self.pressed {
            self.touches += 1;
        }
        self.pressed = true;
        self.last_touch = Some(at);
    }

    /// The touch lifted; the marker stays where it was.
    pub fn release(&mut self) {
        self.pressed = false;
    }
}

/// An I420 picture: the Y plane, then U and V at half resolution (rounded
/// up, as libvpx lays out odd sizes), every row packed.
#[derive(Debug, Clone)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Picture {
    /// The bytes of an I420 picture of `width`×`height`.
    pub fn i420_len(width: u32, height: u32) -> usize {
        let (luma, chroma) = Self::plane_sizes(width, height);
        luma + 2 * chroma
    }

    fn plane_sizes(width: u32, height: u32) -> (usize, usize) {
        let luma = width as usize * height as usize;
        let chroma = width.div_ceil(2) as usize * height.div_ceil(2) as usize;
        (luma, chroma)
    }

    fn new(width: u32, height: u32, (y, u, v): (u8, u8, u8)) -> Self {
        let (luma, chroma) = Self::plane_sizes(width, height);
        let mut data = vec![y; luma + 2 * chroma];
        data[luma..luma + chroma].fill(u);
        data[luma + chroma..].fill(v);
        Self {
            width,
            height,
            data,
        }
    }

    /// Paints the rectangle (clipped to the picture) in `colour`.
    fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, (cy, cu, cv): (u8, u8, u8)) {
        if x >= self.width || y >= self.height {
            return;
        }
        let (x1, y1) = ((x + w).min(self.width), (y + h).min(self.height));
        let width = self.width as usize;
        for row in y..y1 {
            let start = row as usize * width;
            self.data[start + x as usize..start + x1 as usize].fill(cy);
        }
        let (luma, chroma) = Self::plane_sizes(self.width, self.height);
        let chroma_width = self.width.div_ceil(2) as usize;
        for row in (y / 2)..y1.div_ceil(2) {
            let start = row as usize * chroma_width;
            let (from, to) = (start + x as usize / 2, start + (x1 as usize).div_ceil(2));
            self.data[luma + from..luma + to].fill(cu);
            self.data[luma + chroma + from..luma + chroma + to].fill(cv);
        }
    }

    /// The luma of the pixel at (x, y).
    #[cfg(test)]
    pub fn luma(&self, x: u32, y: u32) -> u8 {
        self.data[(y * self.width + x) as usize]
    }

    /// Writes `text` with its top left at (x, y), each font pixel
    /// `scale` pixels square.
    fn text(&mut self, x: u32, y: u32, scale: u32, text: &str) {
        let colour = (WHITE, 128, 128);
        for (n, c) in text.chars().enumerate() {
            let left = x + n as u32 * 6 * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for column in 0..5 {
                    if bits & (0b10000 >> column) != 0 {
                        let (px, py) = (left + column * scale, y + row as u32 * scale);
                        self.fill(px, py, scale, scale, colour);
                    }
                }
            }
        }
    }
}

/// Draws display `index` of device `device_id` at `width`×`height`.
pub fn draw(device_id: &str, index: usize, width: u32, height: u32, state: &State) -> Picture {
    let mut picture = Picture::new(width, height, BACKGROUNDS[index % BACKGROUNDS.len()]);
    // Letters 7% of the narrower side tall, in a font of 5×7.
    let scale = (width.min(height) / 100).max(1);
    let line = 9 * scale;
    let margin = 4 * scale;
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let clock = format!(
        "{:02}:{:02}:{:02}.{:01}",
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
        since_epoch.subsec_millis() / 100
    );
    let lines = [
        device_id.to_uppercase(),
        format!("DISPLAY {index}"),
        format!("{width}X{height}"),
        clock,
        format!("TOUCHES {}", state.touches),
    ];
    for (n, text) in lines.iter().enumerate() {
        picture.text(margin, margin + n as u32 * line, scale, text);
    }
    if let Some(touch) = state.last_touch {
        let size = (width.min(height) / 12).max(4);
        let (x, y) = (touch.x.min(width - 1), touch.y.min(height - 1));
        let (left, top) = (x.saturating_sub(size / 2), y.saturating_sub(size / 2));
        let thick = (size / 8).max(1);
        picture.fill(left, y.saturating_sub(thick / 2), size, thick, MARKER);
        picture.fill(x.saturating_sub(thick / 2), top, thick, size, MARKER);
    }
    picture
}

/// The 5×7 glyph of `c`, a row per byte, its bits the columns from the
/// left; lowercase is drawn as uppercase, the unknown as a box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'D' => [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'Q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
        'Z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        _ => [0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_differ_in_colour_and_the_text_is_drawn() {
        let state = State::default();
        let zero = draw("cvd-1", 0, 720, 1280, &state);
        let one = draw("cvd-1", 1, 720, 1280, &state);
        assert_eq!(zero.data.len(), 720 * 1280 * 3 / 2);
        // A corner away from the text and the marker: the background.
        assert_ne!(zero.data[zero.data.len() - 1], one.data[one.data.len() - 1]);
        assert_eq!(zero.luma(719, 1279), BACKGROUNDS[0].0);
        // Some of the first line is white.
        let scale = 7;
        let white = (0..40 * scale)
            .flat_map(|x| (0..7 * scale).map(move |y| (x, y)))
            .filter(|&(x, y)| zero.luma(4 * scale + x, 4 * scale + y) == WHITE)
            .count();
        assert!(white > 100, "{white} white pixels in the first line");
    }

    #[test]
    fn the_last_touch_is_marked_where_it_landed() {
        let mut state = State::default();
        state.press(Touch { x: 500, y: 900 });
        let picture = draw("cvd-1", 0, 720, 1280, &state);
        assert_eq!(picture.luma(500, 900), MARKER.0);
        assert_eq!(picture.luma(100, 1200), BACKGROUNDS[0].0);
        // A touch outside the display is drawn at its edge, not past it.
        state.press(Touch { x: 5000, y: 5000 });
        let picture = draw("cvd-1", 0, 720, 1280, &state);
        assert_eq!(picture.luma(719, 1279), MARKER.0);
    }

    #[test]
    fn a_press_counts_once_however_far_it_drags() {
        let mut state = State::default();
        state.press(Touch { x: 1, y: 1 });
        state.press(Touch { x: 2, y: 2 });
        state.release();
        state.press(Touch { x: 3, y: 3 });
        assert_eq!(state.touches, 2);
        assert_eq!(state.last_touch, Some(Touch { x: 3, y: 3 }));
        state.release();
        assert_eq!(state.last_touch, Some(Touch { x: 3, y: 3 }));
    }

    #[test]
    fn odd_sizes_and_tiny_displays_do_not_panic() {
        let mut state = State::default();
        state.press(Touch { x: 0, y: 0 });
        for (w, h) in [(16, 16), (1080, 600), (641, 481), (1, 1)] {
            let picture = draw("a-very-long-device-id-beyond-the-edge", 5, w, h, &state);
            assert_eq!(picture.data.len(), Picture::i420_len(w, h));
        }
    }
}
