//! What the window costs the training it shows: the same rotation run (built-in scenes, batch
//! 128, 32 px) headless and then in the real app rendered with wgpu (Mesa's lavapipe where there
//! is no GPU, as the tests use), redrawn at the app's own bounded rate while training. Prints
//! images/s of both, their ratio, and the app's frame time (median, p95):
//!
//!     cargo run --release --example window_cost [SECONDS]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use pretext::config::{DataSource, TrainConfig};
use pretext::train::{Command, Event, Trainer};
use pretext::ui::{DataState, Persisted, PretextApp};

/// The app asks for at most this many repaints a second while training (events wake it after
/// `REPAINT_INTERVAL`), so the harness draws at that rate.
const FRAME: Duration = Duration::from_millis(100);

fn config(out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count: 2400 },
        epochs: 1000,
        out: out.to_path_buf(),
        ..TrainConfig::default()
    }
}

/// Mean images/s over the steps after the first `skip` seconds.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn headless(secs: f64) -> f64 {
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::spawn().unwrap();
    t.send(Command::Start(Box::new(config(out.path()))));
    let mut ips = Vec::new();
    let mut start = None;
    loop {
        match t.events().recv().unwrap() {
            Event::Step(m) => {
                let s = *start.get_or_insert_with(Instant::now);
                if s.elapsed().as_secs_f64() > 3.0 {
                    ips.push(m.images_per_s);
                }
                if s.elapsed().as_secs_f64() > secs {
                    break;
                }
            }
            Event::Finished { .. } => break,
            _ => {}
        }
    }
    mean(&ips)
}

fn windowed(secs: f64) -> (f64, Option<(f32, f32)>) {
    let out = tempfile::tempdir().unwrap();
    let mut h = Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .wgpu()
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, None, None).unwrap());
    h.state_mut().settings = Persisted {
        config: config(out.path()),
        ..Persisted::default()
    };
    h.state_mut().open_data(DataSource::Builtin { count: 2400 });
    while !matches!(h.state().data, DataState::Ready(_)) {
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.state_mut().start();
    let mut ips = Vec::new();
    let mut start = None;
    let mut last_step = 0;
    loop {
        h.step();
        let _ = h.render();
        if let Some(m) = &h.state().run.last_step {
            let s = *start.get_or_insert_with(Instant::now);
            if m.step != last_step && s.elapsed().as_secs_f64() > 3.0 {
                ips.push(m.images_per_s);
            }
            last_step = m.step;
            if s.elapsed().as_secs_f64() > secs {
                break;
            }
        }
        std::thread::sleep(FRAME);
    }
    (mean(&ips), h.state().frame_time())
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let a = headless(secs);
    let (b, frame) = windowed(secs);
    println!("CPU: {cpu}");
    println!("headless: {a:.1} images/s");
    println!(
        "window:   {b:.1} images/s ({:.0}% of headless)",
        100.0 * b / a.max(1e-9)
    );
    if let Some((median, p95)) = frame {
        println!("frame time: median {median:.1} ms, p95 {p95:.1} ms");
    }
}
