//! The status bar: where the run stands, its last step, its directory, and the messages.

use eframe::egui::{self, Color32, RichText};

use super::{ERROR, MUTED};
use crate::train::{Outcome, PauseReason};
use crate::ui::{Action, RunStatus, RunView};

fn status_text(status: &RunStatus) -> (String, Color32) {
    let (text, color) = match status {
        RunStatus::Following { modified } => {
            let age = modified
                .and_then(|t| t.elapsed().ok())
                .map_or(f64::INFINITY, |d| d.as_secs_f64());
            return if age < 60.0 {
                (
                    format!("following (last written {age:.0} s ago)"),
                    Color32::from_rgb(90, 170, 230),
                )
            } else {
                ("following (not written for a minute or more)".into(), MUTED)
            };
        }
        RunStatus::Idle => ("ready", MUTED),
        RunStatus::Starting => ("starting…", MUTED),
        RunStatus::Running => ("training", Color32::from_rgb(90, 200, 120)),
        RunStatus::Paused(PauseReason::NonFiniteLoss) => ("paused: the loss was not finite", ERROR),
        RunStatus::Paused(_) => ("paused", Color32::from_rgb(230, 190, 80)),
        RunStatus::Finished(Outcome::Completed) => ("finished", MUTED),
        RunStatus::Finished(Outcome::Stopped) => ("stopped", MUTED),
        RunStatus::Finished(Outcome::InvalidInput(_) | Outcome::Failed(_)) => ("failed", ERROR),
    };
    (text.to_string(), color)
}

/// Draws the status bar from the run model; a run followed from its directory can be let go.
pub fn show(ui: &mut egui::Ui, run: &RunView, actions: &mut Vec<Action>) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            let (text, color) = status_text(&run.status);
            ui.label(RichText::new(text).color(color).strong());
            if matches!(run.status, RunStatus::Following { .. })
                && ui
                    .small_button("Stop following")
                    .on_hover_text("Keep the curves as they are and stop reading the run directory")
                    .clicked()
            {
                actions.push(Action::StopFollowing);
            }
            if let Some(m) = &run.last_step {
                ui.separator();
                // A run read from its directory does not know the batch within the epoch.
                let batch = if m.batch > 0 {
                    format!("  batch {}/{}", m.batch, m.batches)
                } else {
                    String::new()
                };
                ui.label(format!(
                    "epoch {}{batch}  step {}  loss {:.4}  {:.0} img/s",
                    crate::report::epoch_of(m.epoch, m.epochs),
                    m.step,
                    m.loss,
                    m.images_per_s
                ));
            }
            if let Some(o) = &run.overhead {
                ui.separator();
                ui.label(
                    RichText::new(format!("not training {:.1}%", o.fraction() * 100.0))
                        .color(MUTED),
                )
                .on_hover_text(crate::report::overhead_line(o));
            }
            if let Some(c) = &run.checkpoints {
                ui.separator();
                ui.label(
                    RichText::new(format!(
                        "{} checkpoints, {}",
                        c.kept.len(),
                        crate::report::bytes(c.disk_bytes)
                    ))
                    .color(MUTED),
                )
                .on_hover_text(crate::report::checkpoints_line(c));
            }
            if let Some(d) = &run.run_dir {
                ui.separator();
                ui.label(RichText::new(d.display().to_string()).color(MUTED));
            }
        });
        if let Some(m) = run.messages.last() {
            let color = |error: bool| if error { ERROR } else { MUTED };
            ui.horizontal(|ui| {
                ui.label(RichText::new(&m.text).color(color(m.error)));
                if run.messages.len() > 1 {
                    ui.collapsing(format!("{} messages", run.messages.len()), |ui| {
                        for m in run.messages.iter().rev() {
                            ui.label(RichText::new(&m.text).color(color(m.error)));
                        }
                    });
                }
            });
        }
    });
}
