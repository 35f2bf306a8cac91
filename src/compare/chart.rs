//! chart.png: each task's score as bars — kNN top-1 (best stage) and the linear probe on
//! labelled data, RankMe otherwise — with the random init and raw pixels as horizontal lines.
//! Drawn with plotters into an RGB buffer (text in egui's Ubuntu Light, no system font), then
//! encoded as PNG by the image crate.

use std::sync::OnceLock;

use plotters::prelude::*;

use super::Ranking;

const HEIGHT: u32 = 480;
const KNN_BAR: RGBColor = RGBColor(66, 118, 189);
const PROBE_BAR: RGBColor = RGBColor(140, 182, 227);
const RANDOM_LINE: RGBColor = RGBColor(90, 90, 90);
const PIXELS_LINE: RGBColor = RGBColor(214, 120, 30);

/// Registers the chart's font once; false when it cannot be read.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_ok()
    })
}

/// A horizontal reference line and its legend entry.
struct Level {
    label: String,
    value: f64,
    color: RGBColor,
    width: u32,
}

/// The chart as PNG bytes.
///
/// # Errors
/// A sentence when it cannot be drawn or encoded.
pub(super) fn draw(ranking: &Ranking) -> Result<Vec<u8>, String> {
    if !font_ready() {
        return Err("the chart's font could not be read".into());
    }
    let n = ranking.rows.len().max(1);
    let width = (240 + 150 * n as u32).clamp(640, 2400);
    let mut buf = vec![255u8; (width * HEIGHT * 3) as usize];
    draw_into(&mut buf, (width, HEIGHT), ranking).map_err(|e| e.to_string())?;
    let img = image::RgbImage::from_raw(width, HEIGHT, buf)
        .ok_or_else(|| "the chart's buffer has the wrong size".to_string())?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png.into_inner())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One bar per task, in a colour, values in chart units.
struct Series {
    label: &'static str,
    color: RGBColor,
    values: Vec<f64>,
}

/// What the chart shows: the y axis' unit, the bar series and the reference lines.
struct Content {
    unit: &'static str,
    series: Vec<Series>,
    levels: Vec<Level>,
}

/// kNN top-1 (best stage) and linear probe in %, each reference's two levels.
fn labelled(ranking: &Ranking) -> Content {
    let knn = ranking
        .rows
        .iter()
        .map(|r| r.best_knn.as_ref().map_or(0.0, |b| b.top1 * 100.0))
        .collect();
    let probe = ranking
        .rows
        .iter()
        .map(|r| r.probe.unwrap_or(0.0) * 100.0)
        .collect();
    let mut levels = Vec::new();
    let refs = ranking.random_init.iter().chain(&ranking.raw_pixels);
    for (i, f) in refs.enumerate() {
        let color = if f.input_channels == 0 {
            PIXELS_LINE
        } else if i == 0 {
            RANDOM_LINE
        } else {
            RGBColor(150, 60, 150)
        };
        if let Some(b) = &f.best_knn {
            levels.push(Level {
                label: format!("{}: kNN top-1", f.label),
                value: b.top1 * 100.0,
                color,
                width: 3,
            });
        }
        if let Some(p) = f.probe {
            levels.push(Level {
                label: format!("{}: linear probe", f.label),
                value: p * 100.0,
                color,
                width: 1,
            });
        }
    }
    Content {
        unit: "top-1 accuracy, %",
        series: vec![
            Series {
                label: "kNN top-1 (best stage)",
                color: KNN_BAR,
                values: knn,
            },
            Series {
                label: "linear probe",
                color: PROBE_BAR,
                values: probe,
            },
        ],
        levels,
    }
}

/// RankMe, with each random init's level.
fn unlabelled(ranking: &Ranking) -> Content {
    let rankme = ranking.rows.iter().map(|r| r.gauges.rankme).collect();
    let levels = ranking
        .random_init
        .iter()
        .filter_map(|f| {
            Some(Level {
                label: format!("{}: RankMe", f.label),
                value: f.gauges.as_ref()?.rankme,
                color: RANDOM_LINE,
                width: 3,
            })
        })
        .collect();
    Content {
        unit: "RankMe (label-free proxy)",
        series: vec![Series {
            label: "RankMe",
            color: KNN_BAR,
            values: rankme,
        }],
        levels,
    }
}

/// A legend entry's mark: a bar's colour, or a line's colour and width.
enum Mark {
    Bar(RGBColor),
    Line(RGBColor, u32),
}

/// Each legend entry's (x, row) in pixels, and the strip's height.
type Layout = (Vec<(i32, i32)>, i32);

/// Height of a legend row, px.
const KEY_ROW: i32 = 20;

/// Lays the legend's entries out in rows under the chart, as wide as `width`: each entry's
/// (x, row) in pixels, and the strip's height.
fn legend_layout<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    keys: &[(String, Mark)],
    width: i32,
) -> Result<Layout, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let font = TextStyle::from(("sans-serif", 13).into_font());
    let (left, right) = (68, width - 12);
    let (mut x, mut row) = (left, 0);
    let mut at = Vec::new();
    for (label, _) in keys {
        let (w, _) = root.estimate_text_size(label, &font)?;
        let entry = 20 + w as i32 + 18;
        if x > left && x + entry > right {
            (x, row) = (left, row + 1);
        }
        at.push((x, row));
        x += entry;
    }
    Ok((at, (row + 1) * KEY_ROW + 10))
}

fn draw_into(buf: &mut [u8], size: (u32, u32), ranking: &Ranking) -> DrawResult {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let n = ranking.rows.len();
    let Content {
        unit,
        series,
        levels,
    } = if ranking.labelled {
        labelled(ranking)
    } else {
        unlabelled(ranking)
    };
    // The legend goes in a strip under the chart, never over the bars (at the top right it hid
    // the last task's).
    let keys: Vec<(String, Mark)> = series
        .iter()
        .map(|s| (s.label.to_string(), Mark::Bar(s.color)))
        .chain(
            levels
                .iter()
                .map(|l| (l.label.clone(), Mark::Line(l.color, l.width))),
        )
        .collect();
    let (at, strip) = legend_layout(&root, &keys, size.0 as i32)?;
    let (upper, lower) = root.split_vertically(size.1 as i32 - strip);
    let key_style = TextStyle::from(("sans-serif", 13).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ),
    );
    for ((label, mark), (x, row)) in keys.iter().zip(at) {
        let y = 6 + row * KEY_ROW + KEY_ROW / 2;
        match mark {
            Mark::Bar(c) => {
                lower.draw(&Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()))?;
            }
            Mark::Line(c, w) => {
                lower.draw(&PathElement::new(
                    vec![(x, y), (x + 14, y)],
                    c.stroke_width(*w),
                ))?;
            }
        }
        lower.draw(&Text::new(label.as_str(), (x + 20, y), key_style.clone()))?;
    }
    let top = if ranking.labelled {
        100.0
    } else {
        let most = series
            .iter()
            .flat_map(|s| s.values.iter())
            .chain(levels.iter().map(|l| &l.value))
            .fold(1.0f64, |m, v| m.max(*v));
        most * 1.2
    };
    let title = format!("Contest — ranked by {}", ranking.criterion);
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n.max(1) as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(unit)
        .label_style(("sans-serif", 14))
        .draw()?;
    let k = series.len() as f64;
    for (s, Series { color, values, .. }) in series.iter().enumerate() {
        let color = *color;
        let bar = |i: usize, v: f64| {
            let x0 = i as f64 + 0.12 + 0.76 * s as f64 / k;
            let x1 = x0 + 0.76 / k - 0.02;
            Rectangle::new([(x0, 0.0), (x1, v)], color.filled())
        };
        chart.draw_series(values.iter().enumerate().map(|(i, &v)| bar(i, v)))?;
    }
    for l in levels {
        let style = l.color.stroke_width(l.width);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, l.value), (n.max(1) as f64, l.value)],
            style,
        )))?;
    }
    // Task names under their bars, in the drawing area's own pixels.
    let name_style = TextStyle::from(("sans-serif", 16).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ),
    );
    for (i, r) in ranking.rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let name = format!("{}. {}", i + 1, r.task);
        root.draw(&Text::new(name, (x, y + 8), name_style.clone()))?;
    }
    root.present()?;
    Ok(())
}
