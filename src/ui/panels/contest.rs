//! The contest in the Runs tab: which tasks, the budget (minutes or images seen per task),
//! Compare / Stop / Resume, where it stands, and the ranking so far with random init and raw
//! pixels as reference rows. The tasks' curves are overlaid below it, in the runs view.

use eframe::egui::{self, Color32, RichText};

use super::MUTED;
use crate::compare::{Ranking, TaskResult};
use crate::config::TaskKind;
use crate::ui::Action;
use crate::ui::contest::{BudgetKind, ContestForm, ContestView, contest_name};

/// Draws the contest section; edits the form, asks to start, stop or resume a contest.
pub fn show(
    ui: &mut egui::Ui,
    form: &mut ContestForm,
    view: &mut ContestView,
    can_start: Result<(), &str>,
    actions: &mut Vec<Action>,
) {
    let running = view.is_running();
    ui.add_enabled_ui(!running, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.label("Tasks");
            for t in TaskKind::ALL {
                let mut on = form.tasks.contains(&t);
                if ui.checkbox(&mut on, t.name()).changed() {
                    if on {
                        form.tasks.insert(t);
                    } else {
                        form.tasks.remove(&t);
                    }
                }
            }
        });
        ui.horizontal(|ui| {
            ui.label("Budget per task");
            ui.radio_value(&mut form.kind, BudgetKind::Minutes, "minutes of training");
            ui.radio_value(&mut form.kind, BudgetKind::Images, "images seen");
            match form.kind {
                BudgetKind::Minutes => ui.add(
                    egui::DragValue::new(&mut form.minutes)
                        .range(0.05..=1000.0)
                        .speed(0.1)
                        .suffix(" min"),
                ),
                BudgetKind::Images => ui.add(
                    egui::DragValue::new(&mut form.images)
                        .range(1..=1_000_000_000)
                        .speed(100.0)
                        .suffix(" images"),
                ),
            };
        });
    });
    ui.horizontal(|ui| {
        let why = can_start.err();
        let enabled = why.is_none() && !running && !form.tasks.is_empty();
        let mut b = ui.add_enabled(enabled, egui::Button::new("Compare"));
        b = match why {
            Some(w) => b.on_disabled_hover_text(w),
            None => b.on_hover_text(
                "Train each task on the data loaded, with the settings on the left and the same \
                 budget, then judge each one (kNN per stage, linear probe, gauges) against random \
                 init and raw pixels",
            ),
        };
        if b.clicked() {
            actions.push(Action::StartContest);
        }
        if ui
            .add_enabled(running, egui::Button::new("Stop contest"))
            .clicked()
        {
            actions.push(Action::StopContest);
        }
        if view.resumable()
            && let Some(dir) = &view.dir
            && ui.button("Resume contest").clicked()
        {
            actions.push(Action::ResumeContest(dir.clone()));
        }
        if !running {
            let l = ui.label("or a contest folder");
            ui.add(
                egui::TextEdit::singleline(&mut view.resume_input)
                    .hint_text("runs/compare-…")
                    .desired_width(200.0),
            )
            .labelled_by(l.id);
            if ui.button("Resume").clicked() && !view.resume_input.trim().is_empty() {
                actions.push(Action::ResumeContest(view.resume_input.trim().into()));
            }
        }
    });
    if !view.status.is_empty() {
        ui.horizontal(|ui| {
            if let Some(dir) = &view.dir {
                ui.label(RichText::new(contest_name(dir)).strong())
                    .on_hover_text(dir.display().to_string());
            }
            ui.label(&view.status);
        });
    }
    if let Some(b) = &view.budget {
        ui.label(RichText::new(b).small().color(MUTED));
    }
    if running && let Some((task, i, of)) = view.current {
        ui.add(
            egui::ProgressBar::new(view.progress)
                .desired_width(360.0)
                .text(format!("{task}: task {i} of {of}")),
        );
    }
    if let Some(r) = &view.ranking {
        ranking(ui, r);
    }
}

/// The ranking: one row per judged task, best first, then the reference rows.
fn ranking(ui: &mut egui::Ui, r: &Ranking) {
    ui.label(RichText::new(format!("Ranking by {}", r.criterion)).strong());
    egui::Grid::new("contest-ranking")
        .striped(true)
        .spacing([14.0, 3.0])
        .show(ui, |ui| {
            for h in [
                "#",
                "Task",
                "kNN top-1 (best stage)",
                "Linear probe",
                "RankMe",
                "Steps",
                "Training",
            ] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for (i, row) in r.rows.iter().enumerate() {
                task_row(ui, i + 1, row);
                ui.end_row();
            }
            for t in &r.pending {
                ui.label("");
                ui.label(RichText::new(t.name()).color(MUTED));
                ui.label(RichText::new("not judged yet").color(MUTED));
                ui.end_row();
            }
            for reference in r.random_init.iter().chain(&r.raw_pixels) {
                ui.label("");
                ui.label(RichText::new(&reference.label).italics().color(MUTED));
                ui.label(knn_text(reference.best_knn.as_ref()));
                ui.label(percent(reference.probe));
                ui.label(
                    reference
                        .gauges
                        .as_ref()
                        .map_or("—".into(), |g| format!("{:.1}", g.rankme)),
                );
                ui.end_row();
            }
        });
    if let Some(note) = &r.note {
        ui.add(egui::Label::new(RichText::new(note).small().color(MUTED)).wrap());
    }
}

fn task_row(ui: &mut egui::Ui, rank: usize, row: &TaskResult) {
    ui.label(rank.to_string());
    let mut name = RichText::new(row.task.name());
    if rank == 1 {
        name = name.strong().color(Color32::from_rgb(90, 200, 120));
    }
    let l = ui.label(name);
    if row.collapsed {
        l.on_hover_text("its representation has collapsed");
    }
    ui.label(knn_text(row.best_knn.as_ref()));
    ui.label(percent(row.probe));
    ui.label(format!("{:.1}", row.gauges.rankme));
    ui.label(row.steps.to_string());
    ui.label(format!("{:.1} min", row.train_s / 60.0));
}

fn knn_text(s: Option<&crate::compare::StageScore>) -> String {
    s.map_or("—".into(), |s| {
        let short = crate::eval::embed::stage_key(&s.stage);
        format!("{:.1}% ({short})", s.top1 * 100.0)
    })
}

fn percent(p: Option<f64>) -> String {
    p.map_or("—".into(), |p| format!("{:.1}%", p * 100.0))
}
