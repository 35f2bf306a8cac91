//! The Runs tab: every run directory under the runs folder in a sortable table (tasks, data,
//! size, steps, time, final loss and proxy metric, best kNN stage, linear probe), and the
//! ticked runs' curves overlaid, each run its own colour, against step, epoch or wall-clock
//! time. Runs that another process is still writing move as they are written.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Corner, Line, Plot, PlotPoints};

use super::MUTED;
use crate::runs::{Judged, RunSummary};
use crate::ui::{Action, RunColumn, RunsTab};
use crate::view::XAxis;
use crate::view::overlay::{Gauge, Quantity};

/// The most height the table of runs takes before it scrolls, px.
const TABLE_HEIGHT: f32 = 230.0;
/// The most width a run's name takes (longer names are cut, whole on hover), px.
const NAME_WIDTH: f32 = 210.0;
/// The most width the tasks column takes (longer lists are cut, whole on hover), px.
const TASKS_WIDTH: f32 = 170.0;
/// The most width the data column takes (a folder's name; the path on hover), px.
const DATA_WIDTH: f32 = 110.0;
/// Height of each overlay plot, px.
const PLOT_HEIGHT: f32 = 220.0;

/// A colour per ticked run, in the order they were ticked.
const PALETTE: [Color32; 8] = [
    Color32::from_rgb(240, 100, 140),
    Color32::from_rgb(70, 200, 190),
    Color32::from_rgb(240, 170, 60),
    Color32::from_rgb(140, 130, 250),
    Color32::from_rgb(130, 210, 100),
    Color32::from_rgb(230, 220, 90),
    Color32::from_rgb(100, 170, 250),
    Color32::from_rgb(220, 130, 220),
];

/// The colour of the `i`-th ticked run.
pub fn run_color(i: usize) -> Color32 {
    PALETTE[i % PALETTE.len()]
}

/// Draws the Runs tab; asks to tick runs, follow or continue one, or list another folder.
pub fn show(
    ui: &mut egui::Ui,
    tab: &mut RunsTab,
    root: &mut String,
    following: Option<&Path>,
    smoothing: f64,
    actions: &mut Vec<Action>,
) {
    // Measured before the table, which may be wider than the tab.
    let full_width = ui.available_width();
    ui.horizontal(|ui| {
        let l = ui.label("Runs folder");
        let edit = ui
            .add(egui::TextEdit::singleline(root).desired_width(260.0))
            .labelled_by(l.id);
        let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if ui.button("List").clicked() || entered {
            actions.push(Action::SetRunsRoot(PathBuf::from(root.trim())));
        }
        ui.label(
            RichText::new(format!(
                "{} runs, {} ticked — tick runs to overlay their curves",
                tab.list.len(),
                tab.ticked.len()
            ))
            .color(MUTED),
        );
        if !tab.ticked.is_empty() && ui.button("Untick all").clicked() {
            for (d, _) in &tab.ticked {
                actions.push(Action::ToggleRun(d.clone()));
            }
        }
    });
    if tab.list.is_empty() {
        ui.label(
            RichText::new(
                "No run directories here yet: train one (Start, or `pretext train` in a terminal), \
                 or name another folder and press List.",
            )
            .color(MUTED),
        );
    }
    // Both ways: on a narrow window the last columns scroll into view instead of being cut.
    egui::ScrollArea::both()
        .id_salt("runs-table")
        .max_height(TABLE_HEIGHT)
        .show(ui, |ui| table(ui, tab, following, actions));
    ui.separator();
    if tab.ticked.is_empty() {
        return;
    }
    ui.horizontal(|ui| {
        ui.label("x:");
        for axis in XAxis::ALL {
            ui.selectable_value(&mut tab.x_axis, axis, axis.label());
        }
        ui.separator();
        let stages = crate::eval::embed::STAGES;
        egui::ComboBox::from_label("kNN stage")
            .selected_text(stages.get(tab.stage).copied().unwrap_or("z"))
            .show_ui(ui, |ui| {
                for (i, s) in stages.iter().enumerate() {
                    ui.selectable_value(&mut tab.stage, i, *s);
                }
            });
        egui::ComboBox::from_label("gauge")
            .selected_text(tab.gauge.label())
            .show_ui(ui, |ui| {
                for g in Gauge::ALL {
                    ui.selectable_value(&mut tab.gauge, g, g.label());
                }
            });
    });
    let quantities = [
        Quantity::Loss,
        Quantity::Proxy,
        Quantity::Knn(tab.stage),
        Quantity::Gauge(tab.gauge),
    ];
    let plot_h = PLOT_HEIGHT;
    let w = ((full_width - 24.0) / 2.0).max(240.0);
    egui::Grid::new("runs-plots")
        .num_columns(2)
        .spacing([12.0, 8.0])
        .show(ui, |ui| {
            for (i, q) in quantities.into_iter().enumerate() {
                overlay_plot(ui, tab, q, smoothing, [w, plot_h]);
                if i % 2 == 1 {
                    ui.end_row();
                }
            }
        });
}

/// One overlay plot: each ticked run's line for `q`; hovering a line names its run.
fn overlay_plot(ui: &mut egui::Ui, tab: &RunsTab, q: Quantity, smoothing: f64, size: [f32; 2]) {
    let lines = tab.overlay(q, smoothing);
    ui.vertical(|ui| {
        ui.set_width(size[0]);
        ui.label(RichText::new(q.title()).strong());
        let mut plot = Plot::new(("runs-overlay", q.title()))
            .height(size[1])
            .width(size[0])
            // A falling loss leaves the top right free; rising accuracies and gauges the
            // bottom right.
            .legend(super::plots::legend(if matches!(q, Quantity::Loss) {
                Corner::RightTop
            } else {
                Corner::RightBottom
            }))
            // The mouse wheel scrolls the tab, not the plot (dragging still pans it).
            .allow_scroll(false)
            .x_axis_label(tab.x_axis.label());
        if matches!(q, Quantity::Knn(_)) {
            plot = plot.include_y(0.0).include_y(100.0);
        }
        plot.show(ui, |plot_ui| {
            for line in lines {
                let i = tab
                    .ticked
                    .iter()
                    .position(|(d, _)| crate::ui::run_name(d) == line.name)
                    .unwrap_or(0);
                plot_ui.line(
                    Line::new(line.name, PlotPoints::from(line.points))
                        .color(run_color(i))
                        .width(2.0),
                );
            }
        });
    });
}

/// The table of runs; a click on a column's header sorts by it (again: the other way).
fn table(
    ui: &mut egui::Ui,
    tab: &mut RunsTab,
    following: Option<&Path>,
    actions: &mut Vec<Action>,
) {
    let mut order: Vec<&RunSummary> = tab.list.iter().collect();
    order.sort_by(|a, b| {
        let o = compare(a, b, tab.sort);
        if tab.descending { o.reverse() } else { o }
    });
    let mut sort = None;
    egui::Grid::new("runs-grid")
        .striped(true)
        .num_columns(11)
        .spacing([14.0, 4.0])
        .show(ui, |ui| {
            for (i, (label, column)) in [
                ("Run", RunColumn::Name),
                ("Tasks", RunColumn::Tasks),
                ("Data", RunColumn::Data),
                ("px", RunColumn::Size),
                ("Steps", RunColumn::Steps),
                ("Time", RunColumn::Time),
                ("Loss", RunColumn::Loss),
                ("Proxy metric", RunColumn::Proxy),
                ("kNN top-1", RunColumn::Knn),
                ("Probe", RunColumn::Probe),
            ]
            .into_iter()
            .enumerate()
            {
                let arrow = match (tab.sort == column, tab.descending) {
                    (true, true) => " ▼",
                    (true, false) => " ▲",
                    _ => "",
                };
                if ui
                    .add(
                        egui::Button::new(RichText::new(format!("{label}{arrow}")).strong())
                            .frame(false),
                    )
                    .on_hover_text("Sort by this column")
                    .clicked()
                {
                    sort = Some(column);
                }
                if i == 0 {
                    // Over the run's actions, which follow its name so that they are in view
                    // however wide the table is.
                    ui.label("");
                }
            }
            ui.end_row();
            for r in order {
                row(ui, r, tab, following, actions);
                ui.end_row();
            }
        });
    if let Some(column) = sort {
        if tab.sort == column {
            tab.descending = !tab.descending;
        } else {
            tab.sort = column;
            tab.descending =
                !matches!(column, RunColumn::Tasks | RunColumn::Data | RunColumn::Loss);
        }
    }
}

fn row(
    ui: &mut egui::Ui,
    r: &RunSummary,
    tab: &RunsTab,
    following: Option<&Path>,
    actions: &mut Vec<Action>,
) {
    let ticked_at = tab.ticked.iter().position(|(d, _)| *d == r.dir);
    let mut ticked = ticked_at.is_some();
    let name = RichText::new(&r.name).color(ticked_at.map_or(ui.visuals().text_color(), run_color));
    let mut hover = r.dir.display().to_string();
    if let Some(c) = &r.contest {
        hover.push_str(&format!("\nmade by the contest {c}"));
    }
    // A long name (many tasks) is cut, whole on hover, so that the numbers stay in view.
    let toggled = ui
        .scope(|ui| {
            ui.set_max_width(NAME_WIDTH);
            ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
            ui.checkbox(&mut ticked, name)
                .on_hover_text(hover)
                .changed()
        })
        .inner;
    if toggled {
        actions.push(Action::ToggleRun(r.dir.clone()));
    }
    ui.horizontal(|ui| {
        let shown = following == Some(r.dir.as_path());
        if ui
            .add_enabled(!shown, egui::Button::new("Follow").small())
            .on_hover_text("Show this run in the Training tab, following it as it is written")
            .clicked()
        {
            actions.push(Action::FollowRun(r.dir.clone()));
        }
        if ui
            .add(egui::Button::new("Continue").small())
            .on_hover_text("Train this run on from its last checkpoint")
            .clicked()
        {
            actions.push(Action::ContinueRun {
                dir: r.dir.clone(),
                epochs: None,
            });
        }
        // After the buttons, so that they line up from row to row.
        // A process holds the run's writer lock, or metrics.csv moved lately: a run written
        // by an older build, on a file system that cannot lock, or by a machine whose locks
        // this one does not see (some network shares) — within seconds where the lock says
        // no one holds it (rows reach the disk every second), 30 s where it cannot be told.
        let age = r.modified.and_then(|t| t.elapsed().ok());
        let (live, why) = match r.writing {
            Some(true) => (true, "a pretext process holds this run's writer lock"),
            Some(false) => (
                age.is_some_and(|d| d.as_secs() < 5),
                "metrics.csv was written in the last 5 s (its writer's lock is not visible here)",
            ),
            None => (
                age.is_some_and(|d| d.as_secs() < 30),
                "metrics.csv was written in the last 30 s",
            ),
        };
        if live {
            ui.label(
                RichText::new("● writing")
                    .small()
                    .color(Color32::from_rgb(90, 200, 120)),
            )
            .on_hover_text(why);
        }
    });
    ui.scope(|ui| {
        ui.set_max_width(TASKS_WIDTH);
        ui.add(egui::Label::new(&r.tasks).truncate())
            .on_hover_text(&r.tasks);
    });
    // A folder by its name (the whole path on hover), cut to the column's width.
    let data = Path::new(&r.data)
        .file_name()
        .filter(|_| r.data.contains(std::path::MAIN_SEPARATOR))
        .map_or_else(|| r.data.clone(), |n| n.to_string_lossy().into_owned());
    ui.scope(|ui| {
        ui.set_max_width(DATA_WIDTH);
        ui.add(egui::Label::new(RichText::new(data).small()).truncate())
            .on_hover_text(&r.data);
    });
    ui.label(r.size.to_string());
    ui.label(r.steps.to_string());
    ui.label(minutes(r.wall_s));
    ui.label(r.final_loss.map_or("—".into(), |l| format!("{l:.4}")));
    match &r.proxy {
        Some((name, v, percent)) => {
            let text = if *percent {
                format!("{:.1}%", v * 100.0)
            } else {
                format!("{v:.2}")
            };
            ui.label(text)
                .on_hover_text(format!("{name} at the last step"));
        }
        None => {
            ui.label("—");
        }
    }
    let (knn, source, knn_hover) = knn_cell(r);
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 3.0;
        ui.label(knn).on_hover_text(&knn_hover);
        if !source.is_empty() {
            ui.label(RichText::new(source).small().color(MUTED))
                .on_hover_text(knn_hover);
        }
    });
    let (probe, probe_hover) = probe_cell(r);
    ui.label(probe).on_hover_text(probe_hover);
}

/// The kNN column: the best stage's top-1, where it was measured ("eval": every held-out
/// image; "monitor": the training monitor's subset), and the hover with the step.
fn knn_cell(r: &RunSummary) -> (String, &'static str, String) {
    let what = "the best encoder stage by kNN top-1 (k = 20, held-out labels)";
    match (&r.best_knn, r.knn_from) {
        (Some((stage, v)), Some(from)) => {
            let pct = v * 100.0;
            match from {
                Judged::Eval(step) => (
                    format!("{pct:.1}% ({stage})"),
                    "eval",
                    format!(
                        "{what}, from `pretext eval` or a contest (eval.json){}: every held-out image",
                        step.map_or(String::new(), |s| format!(" at step {s}"))
                    ),
                ),
                Judged::Monitor(step) => (
                    format!("{pct:.1}% ({stage})"),
                    "monitor",
                    format!(
                        "{what}, from the training monitor at step {step}: its fixed subset of \
                         the held-out images{}. `pretext eval --run DIR` judges them all.",
                        if r.eval_step.is_some() {
                            " (newer than the step eval.json judged)"
                        } else {
                            ""
                        }
                    ),
                ),
            }
        }
        _ => ("—".into(), "", what.into()),
    }
}

/// The probe column, from eval.json: marked with its step when the run has trained on since.
fn probe_cell(r: &RunSummary) -> (String, String) {
    let what = "linear probe on z, from `pretext eval` or a contest (eval.json)";
    match (r.probe, r.eval_step) {
        (Some(p), Some(step)) if r.eval_outgrown() => (
            format!("{:.1}% (step {step})", p * 100.0),
            format!(
                "{what}, of the weights at step {step}; the run has trained to step {} since. \
                 `pretext eval --run DIR` judges it again.",
                r.steps
            ),
        ),
        (Some(p), _) => (format!("{:.1}%", p * 100.0), what.into()),
        (None, _) => ("—".into(), what.into()),
    }
}

/// `12.3 s`, `4.5 min`, `2.1 h`.
fn minutes(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Orders two runs by a column, missing numbers first (so they sort last descending).
fn compare(a: &RunSummary, b: &RunSummary, column: RunColumn) -> Ordering {
    let num = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    let o = match column {
        RunColumn::Name => Ordering::Equal,
        RunColumn::Tasks => a.tasks.cmp(&b.tasks),
        RunColumn::Data => a.data.cmp(&b.data),
        RunColumn::Size => a.size.cmp(&b.size),
        RunColumn::Steps => a.steps.cmp(&b.steps),
        RunColumn::Time => a.wall_s.total_cmp(&b.wall_s),
        RunColumn::Loss => num(a.final_loss, b.final_loss),
        RunColumn::Proxy => num(a.proxy.as_ref().map(|p| p.1), b.proxy.as_ref().map(|p| p.1)),
        RunColumn::Knn => num(
            a.best_knn.as_ref().map(|k| k.1),
            b.best_knn.as_ref().map(|k| k.1),
        ),
        RunColumn::Probe => num(a.probe, b.probe),
    };
    // Run names start with their time stamp: the tie-break is their age.
    o.then_with(|| a.name.cmp(&b.name))
}
