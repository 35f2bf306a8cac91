//! The training tab's plots, one function each, drawn from the run model's curves.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Corner, Legend, Line, Plot, PlotPoints, Points};

use crate::config::TaskKind;
use crate::ui::{Persisted, RunView};
use crate::view::history::smooth;

/// A colour per task, so a task's raw, smoothed and baseline curves read as one.
fn task_color(name: &str) -> Color32 {
    match name.rsplit('/').next().unwrap_or(name) {
        "colorization" => Color32::from_rgb(240, 150, 60),
        "colorization-bins" => Color32::from_rgb(250, 205, 150),
        "inpainting" => Color32::from_rgb(170, 120, 240),
        "rotation" => Color32::from_rgb(70, 200, 190),
        "patch" => Color32::from_rgb(230, 210, 80),
        "jigsaw" => Color32::from_rgb(150, 210, 90),
        "contrastive" => Color32::from_rgb(240, 100, 140),
        "moco" => Color32::from_rgb(90, 150, 250),
        "byol" => Color32::from_rgb(250, 110, 90),
        "simsiam" => Color32::from_rgb(120, 230, 140),
        "barlow-twins" => Color32::from_rgb(205, 165, 250),
        "vicreg" => Color32::from_rgb(80, 215, 245),
        // The weighted total of several tasks.
        _ => Color32::from_rgb(200, 200, 210),
    }
}

/// A tick value with as many decimals as the grid step needs (scientific for tiny values).
fn tick_label(v: f64, step: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        return format!("{v:.0e}");
    }
    let decimals = (-step.abs().max(1e-12).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// Grid steps of 1, 2 or 5 × 10ᵏ for a value axis of steps or epochs: the smallest at least
/// `base` (egui_plot's finest useful spacing), then two coarser ones up to ten times it, each a
/// multiple of the one before. With powers of ten alone (egui_plot's default) the labelled
/// level can jump from 100 to 1000 steps and leave a plot of 1,500 steps with two labels.
pub fn nice_grid_steps(base: f64) -> [f64; 3] {
    if !(base.is_finite() && base > 0.0) {
        // No usable spacing (a plot of no width): no grid lines, as egui_plot's own spacer.
        return [f64::INFINITY; 3];
    }
    let decade = 10f64.powf(base.log10().floor());
    let mantissa = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * decade >= base * (1.0 - 1e-9))
        .unwrap_or(10.0);
    let small = mantissa * decade;
    let middle = if mantissa == 1.0 || mantissa == 10.0 {
        5.0 * small
    } else {
        // 2 → 10, 5 → 10: the next power of ten.
        small * 10.0 / mantissa
    };
    [small, middle, 10.0 * small]
}

/// egui_plot's grid spacer on [`nice_grid_steps`].
fn nice_spacer() -> impl Fn(egui_plot::GridInput) -> Vec<egui_plot::GridMark> {
    egui_plot::uniform_grid_spacer(|g| nice_grid_steps(g.base_step_size))
}

/// While a run trains with a monitoring budget: how many times the kNN monitor and gauges have
/// measured, and about when the next measurement comes — the budget spaces them, so on a short
/// run the plots below hold only the measurement before training for a while.
pub fn monitor_hint(run: &RunView) -> Option<String> {
    use crate::train::overhead::Activity;
    if !run.is_training() {
        return None;
    }
    let config = run.config.as_ref()?;
    let budget = config.monitor_budget / 100.0;
    let overhead = run.overhead.as_ref()?;
    let from = overhead.allowed_from(Activity::Monitor, budget)?;
    let measured = run.curves.series.get("gauge/rankme")?.points();
    let last = measured.last()?[0];
    // The step's clock is the budget's: seconds of the run, pauses left out.
    let now = run.last_step.as_ref().map_or(overhead.wall_s, |m| m.wall_s);
    let next = match from - now {
        left if left > 1.0 => format!("in about {left:.0} s"),
        _ if config.knn_every > 0 => {
            format!("at the next epoch end or {}-step mark", config.knn_every)
        }
        _ => "at the next epoch end".to_string(),
    };
    let percent = |share: f64| {
        let p = share * 100.0;
        if p < 1.0 {
            format!("{p:.1}%")
        } else {
            format!("{p:.0}%")
        }
    };
    let count = crate::text::count(measured.len(), "measurement", "measurements");
    Some(format!(
        "{count}, the last at step {last:.0}. Next {next}: measuring may take {} of the run's \
         time (Monitoring budget {}). Measure now measures at once.",
        percent(Activity::Monitor.share() * budget),
        percent(budget)
    ))
}

/// A colour per encoder stage, in [`crate::eval::embed::STAGES`] order.
const STAGE_COLORS: [Color32; 4] = [
    Color32::from_rgb(120, 160, 255),
    Color32::from_rgb(110, 210, 170),
    Color32::from_rgb(240, 200, 90),
    Color32::from_rgb(240, 120, 120),
];

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Raw,
    Smoothed,
    Baseline,
}

/// A legend in `corner`, its background see-through enough that the points under it show.
pub(super) fn legend(corner: Corner) -> Legend {
    Legend::default().position(corner).background_alpha(0.45)
}

/// How a plot is framed.
struct Frame<'f> {
    height: f32,
    /// Fixes the value axis (e.g. 0 to the largest learning rate, so a constant curve does not
    /// sit on an arbitrary axis).
    y_range: Option<(f64, f64)>,
    /// Values the value axis always shows (0 and 1 for a gauge on that scale).
    include_y: &'f [f64],
    /// The x axis spans the run so far (plots of measurements, which are few).
    span_run: bool,
    legend: Corner,
}

impl Frame<'_> {
    /// A curve of every step, its legend in the top right.
    const CURVE: Frame<'static> = Frame {
        height: 190.0,
        y_range: None,
        include_y: &[],
        span_run: false,
        legend: Corner::RightTop,
    };
}

/// What the plots read: the run's curves and how the person wants them shown.
pub struct Plots<'a> {
    pub run: &'a RunView,
    pub settings: &'a Persisted,
}

impl Plots<'_> {
    /// A series as plotted: x in steps or epochs, y on a log scale if asked, smoothed if asked.
    fn xy(&self, name: &str, smoothed: bool) -> Option<Vec<[f64; 2]>> {
        let h = self.run.curves.series.get(name)?;
        let mut pts = h.points();
        if smoothed {
            pts = smooth(&pts, self.settings.smoothing);
        }
        let per_epoch = self.run.curves.batches_per_epoch.max(1) as f64;
        let log = self.settings.log_scale;
        Some(
            pts.into_iter()
                .map(|[x, y]| {
                    let x = if self.settings.x_in_epochs {
                        x / per_epoch
                    } else {
                        x
                    };
                    let y = if log { y.max(1e-12).log10() } else { y };
                    [x, y]
                })
                .collect(),
        )
    }

    /// A measured series' points as dots, so that a single measurement (the one before
    /// training) shows before there is a line to draw.
    fn dots<'b>(&self, name: &str, label: &str, color: Color32) -> Option<Points<'b>> {
        let pts = self.xy(name, false)?;
        Some(
            Points::new(label.to_string(), PlotPoints::from(pts))
                .color(color)
                .radius(2.5),
        )
    }

    fn line<'b>(&self, name: &str, label: String, style: Style) -> Option<Line<'b>> {
        let pts = self.xy(name, style != Style::Raw)?;
        let color = task_color(name);
        let line = Line::new(label, PlotPoints::from(pts));
        Some(match style {
            Style::Raw => line.color(color.gamma_multiply(0.35)).width(1.0),
            Style::Smoothed => line.color(color).width(2.0),
            Style::Baseline => line
                .color(color.gamma_multiply(0.7))
                .style(egui_plot::LineStyle::dashed_loose()),
        })
    }

    /// The step (or epoch, as the x axis is) the run has reached: monitor plots span the run so
    /// far, so a measurement before training sits at the left of an axis that grows.
    fn x_now(&self) -> Option<f64> {
        let step = self.run.last_step.as_ref()?.step as f64;
        Some(if self.settings.x_in_epochs {
            step / self.run.curves.batches_per_epoch.max(1) as f64
        } else {
            step
        })
    }

    /// The x axis every plot of the tab shares: steps or epochs, 1/2/5 grid steps, and the run
    /// so far when `span_run`; the mouse wheel scrolls the tab, not the plot (dragging still
    /// pans it).
    fn x_axis<'p>(&self, plot: Plot<'p>, span_run: bool) -> Plot<'p> {
        let mut plot = plot
            .allow_scroll(false)
            .x_grid_spacer(nice_spacer())
            .x_axis_label(if self.settings.x_in_epochs {
                "epoch"
            } else {
                "step"
            });
        if span_run {
            plot = plot.include_x(0.0);
            if let Some(x) = self.x_now() {
                plot = plot.include_x(x);
            }
        }
        plot
    }

    /// A plot of `lines` and `dots` drawn as `frame` says.
    fn plot(
        &self,
        ui: &mut egui::Ui,
        id: &str,
        title: &str,
        (lines, dots): (Vec<Line<'_>>, Vec<Points<'_>>),
        frame: &Frame<'_>,
    ) {
        ui.vertical(|ui| {
            ui.label(RichText::new(title).strong());
            let log = self.settings.log_scale;
            let plot = Plot::new(id)
                .height(frame.height)
                .legend(legend(frame.legend))
                .y_grid_spacer(nice_spacer())
                // Labels a little closer than egui_plot's 20 px: a plot of 0–75% keeps its 10s.
                .custom_y_axes(vec![
                    egui_plot::AxisHints::new_y().label_spacing(15.0..=25.0),
                ]);
            let mut p = self.x_axis(plot, frame.span_run);
            if log {
                p = p.y_axis_formatter(|m, _| format!("1e{:.1}", m.value));
            } else {
                p = p.y_axis_formatter(|m, _| tick_label(m.value, m.step_size));
            }
            for &y in frame.include_y {
                // On a log scale the axis holds log10 of the values; 0 has none.
                match (log, y > 0.0) {
                    (false, _) => p = p.include_y(y),
                    (true, true) => p = p.include_y(y.log10()),
                    (true, false) => {}
                }
            }
            let y_range = frame.y_range;
            p.show(ui, |plot_ui| {
                for l in lines {
                    plot_ui.line(l);
                }
                for d in dots {
                    plot_ui.points(d);
                }
                if let Some((lo, hi)) = y_range {
                    let (lo, hi) = if log {
                        (lo.max(1e-12).log10(), hi.max(1e-12).log10())
                    } else {
                        (lo, hi)
                    };
                    plot_ui.set_plot_bounds_y(lo..=hi);
                }
            });
        });
    }

    /// Each task's loss, raw and smoothed, and the weighted total of several.
    pub fn loss(&self, ui: &mut egui::Ui, tasks: &[TaskKind]) {
        let mut lines = Vec::new();
        for t in tasks {
            let n = format!("loss/{t}");
            lines.extend(self.line(&n, format!("{t}"), Style::Raw));
            lines.extend(self.line(&n, format!("{t}"), Style::Smoothed));
        }
        lines.extend(self.line("loss/total", "total".into(), Style::Smoothed));
        // Losses fall: the top right is where the curve has left.
        self.plot(ui, "loss", "Loss", (lines, Vec::new()), &Frame::CURVE);
    }

    /// Each task's proxy metric with its trivial baseline dashed.
    pub fn metric(&self, ui: &mut egui::Ui, tasks: &[TaskKind]) {
        let mut lines = Vec::new();
        for t in tasks {
            lines.extend(self.line(&format!("metric/{t}"), format!("{t}"), Style::Smoothed));
            lines.extend(self.line(
                &format!("baseline/{t}"),
                format!("{t} baseline"),
                Style::Baseline,
            ));
        }
        // Proxy metrics rise (every one is higher-is-better): the legend goes where they
        // started, not over the newest values.
        self.plot(
            ui,
            "metric",
            "Proxy metric (% or dB)",
            (lines, Vec::new()),
            &Frame {
                legend: Corner::LeftTop,
                ..Frame::CURVE
            },
        );
    }

    /// Two gauges of z in one plot, drawn once `series` has been measured: each `(series,
    /// label, colour)`.
    fn gauges(
        &self,
        ui: &mut egui::Ui,
        id: &str,
        title: &str,
        lines: [(&str, &str, Color32); 2],
        include_y: &[f64],
    ) {
        if !self.run.curves.series.contains_key(lines[0].0) {
            return;
        }
        let dots = lines
            .iter()
            .filter_map(|(name, label, color)| self.dots(name, label, *color))
            .collect();
        let lines = lines
            .into_iter()
            .filter_map(|(name, label, color)| {
                self.line(name, label.into(), Style::Raw)
                    .map(|l| l.width(2.0).color(color))
            })
            .collect();
        self.plot(
            ui,
            id,
            title,
            (lines, dots),
            &Frame {
                height: 110.0,
                include_y,
                span_run: true,
                ..Frame::CURVE
            },
        );
    }

    /// RankMe / d and std × √d of z, on a common 0..1 scale; and the same of each two-view
    /// method's projector output (dashed), where a collapse can hide from z.
    pub fn collapse_gauges(&self, ui: &mut egui::Ui) {
        if !self.run.curves.series.contains_key("gauge/rankme") {
            return;
        }
        let of_z = [
            (
                "gauge/rankme",
                "RankMe / d of z (share of dimensions in use)",
                Color32::from_rgb(120, 200, 255),
            ),
            (
                "gauge/std",
                "std of L2-normalised z × √d (1 = evenly spread)",
                Color32::from_rgb(240, 170, 90),
            ),
        ];
        let dots = of_z
            .iter()
            .filter_map(|(name, label, color)| self.dots(name, label, *color))
            .collect();
        let mut lines: Vec<Line<'_>> = of_z
            .into_iter()
            .filter_map(|(name, label, color)| {
                self.line(name, label.to_string(), Style::Raw)
                    .map(|l| l.width(2.0).color(color))
            })
            .collect();
        for name in self.run.curves.series.keys() {
            let Some(rest) = name.strip_prefix("gauge/") else {
                continue;
            };
            let (task, label, color) = if let Some(task) = rest.strip_suffix(" output rankme") {
                (task, "RankMe / d", Color32::from_rgb(120, 200, 255))
            } else if let Some(task) = rest.strip_suffix(" output std") {
                (task, "std × √d", Color32::from_rgb(240, 170, 90))
            } else {
                continue;
            };
            if let Some(l) = self.line(name, format!("{label} of {task}'s output"), Style::Raw) {
                lines.push(
                    l.width(1.5)
                        .color(color)
                        .style(egui_plot::LineStyle::dashed_dense()),
                );
            }
        }
        // Room for the legend: two entries of z, two more per two-view method.
        let height = 110.0 + 18.0 * lines.len().saturating_sub(2) as f32;
        self.plot(
            ui,
            "gauges",
            "Collapse gauges (1 = fully spread, 0 = collapsed)",
            (lines, dots),
            &Frame {
                height,
                include_y: &[0.0, 1.0],
                span_run: true,
                ..Frame::CURVE
            },
        );
    }

    /// Alignment of two views and uniformity of z (Wang & Isola 2020).
    pub fn alignment(&self, ui: &mut egui::Ui) {
        self.gauges(
            ui,
            "align",
            "Alignment and uniformity of z (Wang & Isola 2020)",
            [
                (
                    "gauge/alignment",
                    "alignment E‖z − z⁺‖² of two views (lower = views agree)",
                    Color32::from_rgb(130, 220, 130),
                ),
                (
                    "gauge/uniformity",
                    "uniformity log E exp(−2‖zᵢ − zⱼ‖²) (lower = more spread)",
                    Color32::from_rgb(220, 130, 220),
                ),
            ],
            &[0.0],
        );
    }

    /// kNN accuracy per stage, with raw pixels and z before training as dashed floors; or why
    /// it was not measured.
    pub fn knn(&self, ui: &mut egui::Ui) {
        if !self.run.curves.series.keys().any(|k| k.starts_with("knn/")) {
            if let Some(why) = &self.run.knn.not_measured {
                ui.label(
                    RichText::new(format!("kNN accuracy: not measured ({why})"))
                        .color(super::MUTED),
                );
            }
            return;
        }
        let lines: Vec<Line<'_>> = crate::eval::embed::STAGES
            .iter()
            .zip(STAGE_COLORS)
            .filter_map(|(stage, color)| {
                self.line(&format!("knn/{stage}"), stage.to_string(), Style::Raw)
                    .map(|l| l.width(2.0).color(color))
            })
            .collect();
        let dots: Vec<Points<'_>> = crate::eval::embed::STAGES
            .iter()
            .zip(STAGE_COLORS)
            .filter_map(|(stage, color)| self.dots(&format!("knn/{stage}"), stage, color))
            .collect();
        let pixels = self.run.knn.pixels;
        let start = self.run.knn.start;
        ui.vertical(|ui| {
            let subset = self
                .run
                .data
                .as_ref()
                .and_then(crate::report::monitor_subset_line);
            ui.label(
                RichText::new("kNN accuracy per encoder stage (%) — held-out labels, k = 20")
                    .strong(),
            );
            if let Some(subset) = subset {
                ui.add(egui::Label::new(RichText::new(subset).color(super::MUTED)).wrap());
            }
            // Tall enough for its legend (four stages and two reference lines) inside the frame.
            let plot = Plot::new("knn")
                .height(190.0)
                .legend(legend(Corner::LeftBottom))
                .include_y(0.0)
                .include_y(100.0);
            self.x_axis(plot, true).show(ui, |plot_ui| {
                for l in lines {
                    plot_ui.line(l);
                }
                for d in dots {
                    plot_ui.points(d);
                }
                if let Some(p) = pixels {
                    plot_ui.hline(
                        egui_plot::HLine::new("raw pixels", p)
                            .color(Color32::from_gray(160))
                            .style(egui_plot::LineStyle::dashed_loose()),
                    );
                }
                if let Some(z) = start {
                    plot_ui.hline(
                        egui_plot::HLine::new("z before training (random init)", z)
                            .color(STAGE_COLORS[3].gamma_multiply(0.55))
                            .style(egui_plot::LineStyle::dotted_loose()),
                    );
                }
            });
        });
    }

    /// The learning rate on an axis from 0 (or a decade below, on a log scale).
    pub fn learning_rate(&self, ui: &mut egui::Ui) {
        let lr_max = self
            .run
            .curves
            .series
            .get("lr")
            .map_or(self.settings.config.lr, |h| {
                h.points().iter().fold(0.0f64, |m, p| m.max(p[1]))
            });
        let range = if self.settings.log_scale {
            (lr_max / 10.0, lr_max * 2.0)
        } else {
            (0.0, lr_max * 1.2)
        };
        let lines = self
            .line("lr", "lr".into(), Style::Raw)
            .into_iter()
            .collect();
        self.plot(
            ui,
            "lr",
            "Learning rate",
            (lines, Vec::new()),
            &Frame {
                height: 120.0,
                y_range: Some(range),
                ..Frame::CURVE
            },
        );
    }

    /// Training throughput, smoothed.
    pub fn throughput(&self, ui: &mut egui::Ui) {
        let lines = self
            .line("images_per_s", "images/s".into(), Style::Smoothed)
            .into_iter()
            .collect();
        self.plot(
            ui,
            "ips",
            "Images per second",
            (lines, Vec::new()),
            &Frame {
                height: 120.0,
                legend: Corner::RightBottom,
                ..Frame::CURVE
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{monitor_hint, nice_grid_steps};
    use crate::train::overhead::{Activity, Overhead};
    use crate::train::{Event, KnnMetrics};
    use crate::view::{RunStatus, RunView};

    #[test]
    fn the_window_says_when_the_next_measurement_comes() {
        let mut v = RunView::default();
        v.apply(&Event::Knn(KnnMetrics {
            step: 0,
            epoch: 0,
            stages: Vec::new(),
            not_measured: None,
            raw_pixels: None,
            gauges: crate::eval::embed::gauges(&[vec![1.0, 0.0], vec![0.0, 1.0]]),
            head_gauges: Vec::new(),
        }));
        v.status = RunStatus::Running;
        v.config = Some(crate::config::TrainConfig::default());
        let mut o = Overhead::default();
        o.add(Activity::Monitor, 0.7, true, 0.7);
        o.wall_s = 10.0;
        v.overhead = Some(o);
        // (0.7 s spent + 2 × 0.7 s expected) / 3% − 0.7 s = 69.3 s; 10 s have passed.
        let hint = monitor_hint(&v).unwrap();
        assert!(
            hint.starts_with("1 measurement, the last at step 0. Next in about 59 s"),
            "{hint}"
        );
        assert!(
            hint.contains("3% of the run's time (Monitoring budget 5%)"),
            "{hint}"
        );
        o.wall_s = 80.0;
        v.overhead = Some(o);
        assert!(
            monitor_hint(&v)
                .unwrap()
                .contains("Next at the next epoch end or 100-step mark")
        );
        v.config.as_mut().unwrap().monitor_budget = 1.0;
        assert!(
            monitor_hint(&v)
                .unwrap()
                .contains("may take 0.6% of the run's time")
        );
        // A budget of 100%: measured after every epoch, nothing to wait for.
        v.config.as_mut().unwrap().monitor_budget = 100.0;
        assert_eq!(monitor_hint(&v), None);
        v.status = RunStatus::Idle;
        assert_eq!(monitor_hint(&v), None);
    }

    #[test]
    fn grid_steps_are_one_two_five_and_reach_ten_times_the_finest() {
        for (base, want) in [
            (1.0, [1.0, 5.0, 10.0]),
            (23.4, [50.0, 100.0, 500.0]),
            (150.0, [200.0, 1000.0, 2000.0]),
            (0.03, [0.05, 0.1, 0.5]),
            (500.0, [500.0, 1000.0, 5000.0]),
        ] {
            let got = nice_grid_steps(base);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9 * w, "{base}: {got:?}");
            }
        }
        for base in [0.7, 3.0, 8.9, 12.0, 19.0, 99.0, 4321.0] {
            let [a, b, c] = nice_grid_steps(base);
            assert!(a >= base && a < 2.5 * base, "{base}");
            for (fine, coarse) in [(a, b), (b, c)] {
                let k = coarse / fine;
                assert!(
                    (k - k.round()).abs() < 1e-9 && k >= 2.0,
                    "{base}: {a} {b} {c}"
                );
            }
            assert!((c / a - 10.0).abs() < 1e-9);
        }
    }
}
