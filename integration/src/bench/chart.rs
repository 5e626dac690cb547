//! The results as a PNG: one bar per figure, the share of its target used (≤ 100 % meets it), drawn with
//! plotters' bitmap backend and an embedded DejaVu Sans, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::report::{target_text, verdict};
use super::{Outcome, Results, Row, Target};

const WIDTH: u32 = 1200;
const ROW: i32 = 44;
const TOP: i32 = 96;
const LABEL_X: i32 = 20;
const BAR_X: i32 = 360;
const BAR_W: i32 = 560;
/// The bar scale ends at this share of the target; longer bars are cut and marked.
const SCALE: f64 = 2.5;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both are valid TrueType files shipped inside the dejavu crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// The share of its target a row uses: measured / limit for "at most", target / measured for "at least".
pub fn share(row: &Row) -> Option<f64> {
    let measured = row.measurement.as_ref()?.measured;
    match row.spec.target {
        Target::AtMost(limit) => Some(measured / limit),
        Target::AtLeast(min) if measured > 0.0 => Some(min / measured),
        Target::AtLeast(_) => Some(f64::INFINITY),
        Target::None => None,
    }
}

fn x_of(share: f64) -> i32 {
    BAR_X + (share.clamp(0.0, SCALE) / SCALE * BAR_W as f64) as i32
}

/// Draw the chart of `results` to `path` (PNG).
pub fn draw(results: &Results, title: &str, path: &Path) -> Result<(), String> {
    register_fonts();
    let height = (TOP + ROW * results.rows.len() as i32 + 40) as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let text = |size: f64, color: RGBColor| {
        ("sans-serif", size)
            .into_font()
            .color(&color)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    let grey = RGBColor(110, 110, 110);
    let (green, red, light) = (
        RGBColor(46, 139, 87),
        RGBColor(200, 55, 55),
        RGBColor(205, 205, 205),
    );
    root.draw(&Text::new(title, (LABEL_X, 24), text(22.0, BLACK)))
        .map_err(err)?;
    root.draw(&Text::new(
        "bar: share of the target used (measured / limit, or target / measured for ratios); the line is the \
         target, left of it is met",
        (LABEL_X, 56),
        text(14.0, grey),
    ))
    .map_err(err)?;
    for share in [0.5, 1.0, 1.5, 2.0, 2.5] {
        let x = x_of(share);
        let style = if share == 1.0 {
            BLACK.stroke_width(2)
        } else {
            light.stroke_width(1)
        };
        root.draw(&PathElement::new(
            vec![(x, TOP - 6), (x, TOP + ROW * results.rows.len() as i32)],
            style,
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            format!("{:.0} %", share * 100.0),
            (x - 14, TOP - 16),
            text(12.0, grey),
        ))
        .map_err(err)?;
    }
    for (i, row) in results.rows.iter().enumerate() {
        let y = TOP + ROW * i as i32 + ROW / 2;
        root.draw(&Text::new(
            format!("{}  {}", row.spec.id, row.spec.short),
            (LABEL_X, y),
            text(16.0, BLACK),
        ))
        .map_err(err)?;
        let measured = row.measurement.as_ref().map(|m| row.spec.unit.format(m.measured));
        let (label, label_x) = match (&row.outcome, share(row), measured) {
            (Outcome::Measured, Some(share), Some(value)) => {
                let color = if share <= 1.0 { green } else { red };
                let end = x_of(share);
                root.draw(&Rectangle::new(
                    [(BAR_X, y - 12), (end.max(BAR_X + 2), y + 12)],
                    color.filled(),
                ))
                .map_err(err)?;
                let cut = if share > SCALE { " ▸" } else { "" };
                let label = format!(
                    "{value}{cut}   target {}: {}",
                    target_text(row),
                    verdict(row).trim_matches('*')
                );
                (label, end + 8)
            }
            (Outcome::Measured, None, Some(value)) => (format!("{value}  (no target)"), BAR_X),
            _ => (verdict(row), BAR_X),
        };
        let color = match row.outcome {
            Outcome::Failed(_) => red,
            Outcome::Measured => BLACK,
            _ => grey,
        };
        // A white ground, so the target line does not run through the words.
        let style = text(14.0, color);
        let (w, h) = root.estimate_text_size(&label, &style).map_err(err)?;
        let (w, h) = (w as i32, h as i32);
        root.draw(&Rectangle::new(
            [(label_x - 2, y - h / 2 - 2), (label_x + w + 2, y + h / 2 + 2)],
            WHITE.filled(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(label, (label_x, y), style)).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
