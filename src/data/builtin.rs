//! The built-in data set: deterministic, procedurally generated landscape scenes.
//!
//! Eight classes — meadow, beach, desert, snowfield, night, forest, city, mountains — drawn with
//! anti-aliased shapes at any working size. Every scene has a canonical "up" (sky above, ground
//! below, sun or moon in the sky, trees and buildings standing on the ground), so rotation
//! prediction is learnable, and semantic colours (blue sky, green grass, yellow sun, white snow,
//! orange sand), so colorization is learnable. Images are interleaved by class (image `i` has
//! class `i % 8`), so any prefix is balanced. The set depends only on the count and the size,
//! never on the training seed.

use rayon::prelude::*;

use super::Dataset;
use crate::config::DataSource;
use crate::rng::Rng;

/// Class names, indexed by label.
pub const CLASSES: [&str; 8] = [
    "meadow",
    "beach",
    "desert",
    "snowfield",
    "night",
    "forest",
    "city",
    "mountains",
];

/// The generator's fixed seed: the built-in set is the same for every run.
const DATA_SEED: u64 = 0x0005_CE7E_5EED;

type Rgb = [f32; 3];

#[derive(Clone, Copy, Debug)]
enum Shape {
    Disc {
        cx: f32,
        cy: f32,
        r: f32,
    },
    Rect {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
    },
    /// Isosceles triangle: apex at (ax, ay), base on y = by with half width hw.
    Tri {
        ax: f32,
        ay: f32,
        by: f32,
        hw: f32,
    },
}

impl Shape {
    /// Approximate signed distance (negative inside), in image units.
    fn sdf(&self, u: f32, v: f32) -> f32 {
        match *self {
            Shape::Disc { cx, cy, r } => ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - r,
            Shape::Rect { x0, y0, x1, y1 } => {
                let dx = (x0 - u).max(u - x1);
                let dy = (y0 - v).max(v - y1);
                dx.max(dy)
            }
            Shape::Tri { ax, ay, by, hw } => {
                let h = (by - ay).max(1e-6);
                let t = ((v - ay) / h).clamp(0.0, 1.0);
                let half = hw * t;
                // Distance to the slanted sides, scaled to be roughly Euclidean.
                let side = ((u - ax).abs() - half) * h / (h * h + hw * hw).sqrt();
                side.max(ay - v).max(v - by)
            }
        }
    }

    fn bounds(&self) -> (f32, f32, f32, f32) {
        match *self {
            Shape::Disc { cx, cy, r } => (cx - r, cy - r, cx + r, cy + r),
            Shape::Rect { x0, y0, x1, y1 } => (x0, y0, x1, y1),
            Shape::Tri { ax, ay, by, hw } => (ax - hw, ay, ax + hw, by),
        }
    }
}

struct Scene {
    sky_top: Rgb,
    sky_bottom: Rgb,
    ground_top: Rgb,
    ground_bottom: Rgb,
    horizon: f32,
    wave_amp: f32,
    wave_freq: f32,
    wave_phase: f32,
    /// Painted in order over sky and ground.
    shapes: Vec<(Shape, Rgb)>,
    noise: f32,
}

fn jitter(rng: &mut Rng, c: Rgb, amount: f32) -> Rgb {
    let b = 1.0 + amount * rng.normal() * 0.5;
    [
        (c[0] * b + amount * 0.3 * rng.normal()).clamp(0.0, 1.0),
        (c[1] * b + amount * 0.3 * rng.normal()).clamp(0.0, 1.0),
        (c[2] * b + amount * 0.3 * rng.normal()).clamp(0.0, 1.0),
    ]
}

fn day_sky(rng: &mut Rng) -> (Rgb, Rgb) {
    (
        jitter(rng, [0.30, 0.55, 0.92], 0.12),
        jitter(rng, [0.70, 0.84, 0.98], 0.08),
    )
}

fn sun(rng: &mut Rng, horizon: f32, color: Rgb, radius: (f32, f32)) -> (Shape, Rgb) {
    let r = rng.range(radius.0, radius.1);
    let cx = rng.range(0.12, 0.88);
    let cy = rng.range(0.08, (horizon - r - 0.05).max(0.1));
    (Shape::Disc { cx, cy, r }, jitter(rng, color, 0.05))
}

fn cloud(rng: &mut Rng, horizon: f32, out: &mut Vec<(Shape, Rgb)>) {
    let cx = rng.range(0.1, 0.9);
    let cy = rng.range(0.08, (horizon - 0.12).max(0.1));
    let white = jitter(rng, [0.97, 0.97, 0.98], 0.03);
    for k in 0..3 {
        let dx = (k as f32 - 1.0) * 0.07;
        let r = if k == 1 { 0.065 } else { 0.048 };
        out.push((
            Shape::Disc {
                cx: cx + dx,
                cy: cy + if k == 1 { -0.015 } else { 0.0 },
                r,
            },
            white,
        ));
    }
}

fn scene(class: usize, rng: &mut Rng) -> Scene {
    let horizon = rng.range(0.48, 0.68);
    let mut shapes = Vec::new();
    let mut s = Scene {
        sky_top: [0.0; 3],
        sky_bottom: [0.0; 3],
        ground_top: [0.0; 3],
        ground_bottom: [0.0; 3],
        horizon,
        wave_amp: rng.range(0.0, 0.025),
        wave_freq: rng.range(3.0, 9.0),
        wave_phase: rng.range(0.0, 6.3),
        shapes: Vec::new(),
        noise: 0.025,
    };
    match CLASSES[class] {
        "meadow" => {
            (s.sky_top, s.sky_bottom) = day_sky(rng);
            s.ground_top = jitter(rng, [0.40, 0.72, 0.25], 0.1);
            s.ground_bottom = jitter(rng, [0.18, 0.50, 0.12], 0.1);
            shapes.push(sun(rng, horizon, [1.0, 0.88, 0.2], (0.06, 0.1)));
            if rng.f32() < 0.7 {
                cloud(rng, horizon, &mut shapes);
            }
            for _ in 0..rng.below(10) + 4 {
                let c = [
                    [0.95, 0.2, 0.2],
                    [1.0, 1.0, 1.0],
                    [1.0, 0.9, 0.1],
                    [0.8, 0.4, 0.9],
                ][rng.below(4)];
                shapes.push((
                    Shape::Disc {
                        cx: rng.range(0.02, 0.98),
                        cy: rng.range(horizon + 0.06, 0.98),
                        r: rng.range(0.012, 0.025),
                    },
                    c,
                ));
            }
        }
        "beach" => {
            (s.sky_top, s.sky_bottom) = day_sky(rng);
            s.wave_amp = 0.0;
            s.ground_top = jitter(rng, [0.95, 0.87, 0.62], 0.06);
            s.ground_bottom = jitter(rng, [0.88, 0.76, 0.50], 0.06);
            let sea = jitter(rng, [0.05, 0.35, 0.65], 0.1);
            let shore = horizon + rng.range(0.12, 0.22);
            shapes.push((
                Shape::Rect {
                    x0: -1.0,
                    y0: horizon,
                    x1: 2.0,
                    y1: shore,
                },
                sea,
            ));
            for k in 0..3 {
                let y = horizon + (shore - horizon) * (0.25 + 0.25 * k as f32);
                shapes.push((
                    Shape::Rect {
                        x0: rng.range(-0.2, 0.4),
                        y0: y,
                        x1: rng.range(0.6, 1.2),
                        y1: y + 0.012,
                    },
                    [0.85, 0.93, 0.98],
                ));
            }
            shapes.push(sun(rng, horizon, [1.0, 0.9, 0.3], (0.05, 0.09)));
            if rng.f32() < 0.5 {
                cloud(rng, horizon, &mut shapes);
            }
        }
        "desert" => {
            s.sky_top = jitter(rng, [0.55, 0.70, 0.90], 0.08);
            s.sky_bottom = jitter(rng, [0.98, 0.88, 0.70], 0.05);
            s.ground_top = jitter(rng, [0.90, 0.65, 0.32], 0.08);
            s.ground_bottom = jitter(rng, [0.75, 0.45, 0.20], 0.08);
            s.wave_amp = rng.range(0.03, 0.07);
            s.wave_freq = rng.range(4.0, 8.0);
            shapes.push(sun(rng, horizon, [1.0, 0.97, 0.75], (0.08, 0.12)));
            for _ in 0..rng.below(3) {
                let x = rng.range(0.1, 0.9);
                let base = horizon + rng.range(0.12, 0.3);
                let h = rng.range(0.12, 0.22);
                let green = jitter(rng, [0.2, 0.55, 0.25], 0.08);
                shapes.push((
                    Shape::Rect {
                        x0: x - 0.02,
                        y0: base - h,
                        x1: x + 0.02,
                        y1: base,
                    },
                    green,
                ));
                shapes.push((
                    Shape::Rect {
                        x0: x - 0.07,
                        y0: base - h * 0.6,
                        x1: x + 0.07,
                        y1: base - h * 0.6 + 0.03,
                    },
                    green,
                ));
            }
        }
        "snowfield" => {
            s.sky_top = jitter(rng, [0.55, 0.65, 0.80], 0.08);
            s.sky_bottom = jitter(rng, [0.82, 0.86, 0.92], 0.04);
            s.ground_top = jitter(rng, [0.97, 0.97, 1.0], 0.02);
            s.ground_bottom = jitter(rng, [0.82, 0.86, 0.93], 0.03);
            for _ in 0..rng.below(6) + 2 {
                let x = rng.range(0.03, 0.97);
                let h = rng.range(0.15, 0.3);
                let base = horizon + rng.range(0.0, 0.08);
                shapes.push((
                    Shape::Tri {
                        ax: x,
                        ay: base - h,
                        by: base,
                        hw: h * 0.35,
                    },
                    jitter(rng, [0.08, 0.30, 0.15], 0.1),
                ));
            }
            if rng.f32() < 0.5 {
                shapes.push(sun(rng, horizon, [1.0, 0.95, 0.8], (0.05, 0.08)));
            }
        }
        "night" => {
            s.sky_top = jitter(rng, [0.02, 0.03, 0.12], 0.1);
            s.sky_bottom = jitter(rng, [0.12, 0.12, 0.32], 0.1);
            s.ground_top = jitter(rng, [0.08, 0.12, 0.08], 0.1);
            s.ground_bottom = jitter(rng, [0.03, 0.05, 0.03], 0.1);
            s.noise = 0.015;
            for _ in 0..rng.below(20) + 15 {
                shapes.push((
                    Shape::Disc {
                        cx: rng.range(0.0, 1.0),
                        cy: rng.range(0.0, horizon - 0.05),
                        r: rng.range(0.006, 0.014),
                    },
                    [1.0, 1.0, 0.92],
                ));
            }
            shapes.push(sun(rng, horizon, [0.95, 0.95, 0.82], (0.05, 0.08)));
        }
        "forest" => {
            (s.sky_top, s.sky_bottom) = day_sky(rng);
            s.ground_top = jitter(rng, [0.25, 0.45, 0.15], 0.1);
            s.ground_bottom = jitter(rng, [0.15, 0.32, 0.08], 0.1);
            if rng.f32() < 0.6 {
                shapes.push(sun(rng, horizon, [1.0, 0.9, 0.25], (0.05, 0.08)));
            }
            for _ in 0..rng.below(5) + 3 {
                let x = rng.range(0.05, 0.95);
                let base = horizon + rng.range(0.02, 0.2);
                let h = rng.range(0.18, 0.32);
                shapes.push((
                    Shape::Rect {
                        x0: x - 0.02,
                        y0: base - h,
                        x1: x + 0.02,
                        y1: base,
                    },
                    jitter(rng, [0.40, 0.25, 0.12], 0.1),
                ));
                shapes.push((
                    Shape::Disc {
                        cx: x,
                        cy: base - h,
                        r: rng.range(0.07, 0.12),
                    },
                    jitter(rng, [0.12, 0.50, 0.15], 0.12),
                ));
            }
        }
        "city" => {
            s.sky_top = jitter(rng, [0.95, 0.55, 0.35], 0.08);
            s.sky_bottom = jitter(rng, [1.0, 0.85, 0.55], 0.05);
            s.ground_top = jitter(rng, [0.30, 0.30, 0.32], 0.06);
            s.ground_bottom = jitter(rng, [0.18, 0.18, 0.20], 0.06);
            s.wave_amp = 0.0;
            let mut x = rng.range(-0.05, 0.05);
            while x < 1.0 {
                let w = rng.range(0.1, 0.2);
                let h = rng.range(0.15, horizon - 0.08);
                let grey = rng.range(0.3, 0.6);
                shapes.push((
                    Shape::Rect {
                        x0: x,
                        y0: horizon - h,
                        x1: x + w - 0.015,
                        y1: horizon + 0.01,
                    },
                    jitter(rng, [grey, grey, grey * 1.05], 0.05),
                ));
                let mut wy = horizon - h + 0.04;
                while wy < horizon - 0.05 {
                    if rng.f32() < 0.6 {
                        shapes.push((
                            Shape::Rect {
                                x0: x + 0.025,
                                y0: wy,
                                x1: x + w - 0.04,
                                y1: wy + 0.025,
                            },
                            [1.0, 0.9, 0.4],
                        ));
                    }
                    wy += 0.06;
                }
                x += w;
            }
        }
        _ => {
            // mountains
            (s.sky_top, s.sky_bottom) = day_sky(rng);
            s.ground_top = jitter(rng, [0.35, 0.60, 0.30], 0.08);
            s.ground_bottom = jitter(rng, [0.20, 0.42, 0.18], 0.08);
            if rng.f32() < 0.6 {
                shapes.push(sun(rng, horizon * 0.6, [1.0, 0.92, 0.3], (0.04, 0.07)));
            }
            for _ in 0..rng.below(3) + 2 {
                let x = rng.range(0.0, 1.0);
                let h = rng.range(0.25, horizon - 0.05);
                let hw = h * rng.range(0.8, 1.4);
                let rock = rng.range(0.38, 0.55);
                let apex_y = horizon - h;
                shapes.push((
                    Shape::Tri {
                        ax: x,
                        ay: apex_y,
                        by: horizon + 0.01,
                        hw,
                    },
                    jitter(rng, [rock, rock, rock + 0.06], 0.05),
                ));
                let cap = h * 0.3;
                shapes.push((
                    Shape::Tri {
                        ax: x,
                        ay: apex_y,
                        by: apex_y + cap,
                        hw: hw * cap / h,
                    },
                    [0.97, 0.97, 1.0],
                ));
            }
        }
    }
    s.shapes = shapes;
    s
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Cheap deterministic per-pixel noise in [-1, 1].
fn hash_noise(a: u64, b: u64) -> f32 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn render(scene: &Scene, size: usize, id: u64) -> Vec<u8> {
    let mut out = vec![0u8; size * size * 3];
    let px = 1.0 / size as f32;
    for y in 0..size {
        let v = (y as f32 + 0.5) * px;
        for x in 0..size {
            let u = (x as f32 + 0.5) * px;
            let ground_y = scene.horizon
                + scene.wave_amp
                    * (scene.wave_freq * u * std::f32::consts::TAU / 3.0 + scene.wave_phase).sin();
            // Anti-aliased horizon.
            let g = ((v - ground_y) / px + 0.5).clamp(0.0, 1.0);
            let sky = mix(
                scene.sky_top,
                scene.sky_bottom,
                (v / ground_y.max(0.05)).min(1.0),
            );
            let ground = mix(
                scene.ground_top,
                scene.ground_bottom,
                ((v - ground_y) / (1.0 - ground_y).max(0.05)).clamp(0.0, 1.0),
            );
            let mut c = mix(sky, ground, g);
            for (shape, color) in &scene.shapes {
                let (x0, y0, x1, y1) = shape.bounds();
                if u < x0 - px || u > x1 + px || v < y0 - px || v > y1 + px {
                    continue;
                }
                let cover = (0.5 - shape.sdf(u, v) / px).clamp(0.0, 1.0);
                if cover > 0.0 {
                    c = mix(c, *color, cover);
                }
            }
            let n = scene.noise * hash_noise(id, (y * size + x) as u64);
            let o = (y * size + x) * 3;
            for k in 0..3 {
                out[o + k] = ((c[k] + n).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    out
}

/// Generates `count` scenes at `size × size`.
pub fn generate(count: usize, size: usize) -> Dataset {
    let images: Vec<Vec<u8>> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::derive(DATA_SEED, &[i as u64]);
            let s = scene(i % CLASSES.len(), &mut rng);
            render(&s, size, i as u64)
        })
        .collect();
    let pixels = images.concat();
    let names = (0..count)
        .map(|i| format!("{}/{i:05}", CLASSES[i % CLASSES.len()]))
        .collect();
    let labels = (0..count).map(|i| (i % CLASSES.len()) as u32).collect();
    Dataset::from_parts(
        DataSource::Builtin { count },
        size,
        pixels,
        names,
        Some(labels),
        CLASSES.iter().map(|s| (*s).to_string()).collect(),
        Vec::new(),
    )
}

/// Class names of the glyph set, indexed by label.
pub const GLYPH_CLASSES: [&str; 8] = [
    "arrow", "house", "tree", "tee", "ell", "person", "flag", "cup",
];

/// The glyph set's fixed seed.
const GLYPH_SEED: u64 = 0x0006_1F95_5EED;

fn random_color(rng: &mut Rng) -> Rgb {
    [rng.f32(), rng.f32(), rng.f32()]
}

/// A colour far enough from `bg` to be seen.
fn contrasting(rng: &mut Rng, bg: Rgb) -> Rgb {
    let mut best = random_color(rng);
    for _ in 0..16 {
        let d: f32 = best.iter().zip(&bg).map(|(a, b)| (a - b).abs()).sum();
        if d > 1.0 {
            break;
        }
        best = random_color(rng);
    }
    best
}

/// The glyph of `class` in a box of side `s` centred at (cx, cy), upright.
fn glyph(class: usize, cx: f32, cy: f32, s: f32) -> Vec<Shape> {
    let (l, t, r, b) = (cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0);
    let rect = |x0: f32, y0: f32, x1: f32, y1: f32| Shape::Rect { x0, y0, x1, y1 };
    let bar = s * 0.16;
    match GLYPH_CLASSES[class] {
        // Triangle head on a stem.
        "arrow" => vec![
            Shape::Tri {
                ax: cx,
                ay: t,
                by: t + s * 0.5,
                hw: s * 0.45,
            },
            rect(cx - bar / 2.0, t + s * 0.45, cx + bar / 2.0, b),
        ],
        // Roof over a body.
        "house" => vec![
            Shape::Tri {
                ax: cx,
                ay: t,
                by: t + s * 0.45,
                hw: s * 0.5,
            },
            rect(l + s * 0.12, t + s * 0.45, r - s * 0.12, b),
        ],
        // Round crown on a trunk.
        "tree" => vec![
            Shape::Disc {
                cx,
                cy: t + s * 0.3,
                r: s * 0.3,
            },
            rect(cx - bar / 2.0, t + s * 0.5, cx + bar / 2.0, b),
        ],
        "tee" => vec![
            rect(l, t, r, t + bar),
            rect(cx - bar / 2.0, t, cx + bar / 2.0, b),
        ],
        "ell" => vec![rect(l, t, l + bar, b), rect(l, b - bar, r, b)],
        // Head, body, legs.
        "person" => vec![
            Shape::Disc {
                cx,
                cy: t + s * 0.13,
                r: s * 0.13,
            },
            rect(cx - s * 0.14, t + s * 0.28, cx + s * 0.14, t + s * 0.65),
            Shape::Tri {
                ax: cx,
                ay: t + s * 0.6,
                by: b,
                hw: s * 0.3,
            },
        ],
        // Pole with a flag at the top right.
        "flag" => vec![
            rect(l + s * 0.2, t, l + s * 0.2 + bar, b),
            rect(l + s * 0.2, t, r, t + s * 0.4),
        ],
        // U shape: open at the top.
        _ => vec![
            rect(l, t, l + bar, b),
            rect(r - bar, t, r, b),
            rect(l, b - bar, r, b),
        ],
    }
}

fn glyph_scene(class: usize, rng: &mut Rng) -> Scene {
    let top = random_color(rng);
    let bottom = random_color(rng);
    let mut shapes = Vec::new();
    // Clutter: small blobs and bars in random colours.
    for _ in 0..rng.below(3) {
        let (x, y, r) = (rng.f32(), rng.f32(), rng.range(0.03, 0.06));
        let c = random_color(rng);
        shapes.push(if rng.f32() < 0.5 {
            (Shape::Disc { cx: x, cy: y, r }, c)
        } else {
            (
                Shape::Rect {
                    x0: x - r,
                    y0: y - r * 0.4,
                    x1: x + r,
                    y1: y + r * 0.4,
                },
                c,
            )
        });
    }
    let s = rng.range(0.55, 0.8);
    let cx = rng.range(s / 2.0 + 0.02, 1.0 - s / 2.0 - 0.02);
    let cy = rng.range(s / 2.0 + 0.02, 1.0 - s / 2.0 - 0.02);
    let color = contrasting(rng, mix(top, bottom, cy));
    shapes.extend(glyph(class, cx, cy, s).into_iter().map(|g| (g, color)));
    Scene {
        sky_top: top,
        sky_bottom: bottom,
        ground_top: bottom,
        ground_bottom: bottom,
        horizon: 1.0,
        wave_amp: 0.0,
        wave_freq: 1.0,
        wave_phase: 0.0,
        shapes,
        noise: 0.04,
    }
}

/// Generates `count` glyph images at `size × size`: eight upright shapes (arrow, house, tree,
/// T, L, person, flag, cup) in random colours, places and sizes over random gradients with
/// clutter. Colour and position say nothing about the class, so raw pixels and random
/// features classify them poorly and a representation has to learn shape — a harder test
/// than the scenes. Deterministic, interleaved by class like the scenes.
pub fn generate_glyphs(count: usize, size: usize) -> Dataset {
    let images: Vec<Vec<u8>> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::derive(GLYPH_SEED, &[i as u64]);
            let s = glyph_scene(i % GLYPH_CLASSES.len(), &mut rng);
            render(&s, size, i as u64 ^ GLYPH_SEED)
        })
        .collect();
    let pixels = images.concat();
    let names = (0..count)
        .map(|i| format!("{}/{i:05}", GLYPH_CLASSES[i % GLYPH_CLASSES.len()]))
        .collect();
    let labels = (0..count)
        .map(|i| (i % GLYPH_CLASSES.len()) as u32)
        .collect();
    Dataset::from_parts(
        DataSource::Glyphs { count },
        size,
        pixels,
        names,
        Some(labels),
        GLYPH_CLASSES.iter().map(|s| (*s).to_string()).collect(),
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_sky_is_brighter_blue_on_top() {
        let a = generate(64, 32);
        let b = generate(64, 32);
        assert_eq!(a.image(17), b.image(17));
        assert_eq!(a.len(), 64);
        assert!(a.class_counts().iter().all(|(_, n)| *n == 8));
        // Day scenes: the top rows are bluer than the bottom rows.
        for i in [0usize, 8, 40] {
            let img = a.image(i);
            let row_blue = |y: usize| -> f32 {
                (0..32)
                    .map(|x| {
                        let p = &img[(y * 32 + x) * 3..];
                        f32::from(p[2]) - f32::from(p[0])
                    })
                    .sum::<f32>()
            };
            assert!(row_blue(1) > row_blue(30), "image {i}");
        }
    }
}
