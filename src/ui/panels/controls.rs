//! The training controls: tasks and settings (ranges from the configuration's own validation
//! limits), and, in a strip of their own that never scrolls out of view, Start / Pause / Resume /
//! Step / Stop / Reset, the learning rate of a running run, saving a checkpoint and measuring now.

use eframe::egui;

use crate::config::{self as limits, ContrastiveLoss, LrSchedule, MaskKind, TaskKind, TrainConfig};
use crate::train::Command;
use crate::ui::{Action, DataState, RunStatus, RunView};

/// Draws the training settings (tasks, sizes, schedule, device …); edits `config`. They are
/// locked while a run trains.
pub fn show(ui: &mut egui::Ui, run: &RunView, config: &mut TrainConfig, actions: &mut Vec<Action>) {
    ui.heading("Training");
    let busy = run.is_training();
    ui.add_enabled_ui(!busy, |ui| settings(ui, config, actions));
}

/// Draws the run's buttons — Start / Pause / Resume / Step / Stop / Reset, the learning rate of
/// a running run, Save checkpoint and Measure now — for a strip that stays in view below the
/// scrolling settings; edits `lr_input`, asks for commands.
pub fn run_buttons(
    ui: &mut egui::Ui,
    run: &RunView,
    data: &DataState,
    lr_input: &mut f64,
    actions: &mut Vec<Action>,
) {
    let busy = run.is_training();
    let ready = matches!(data, DataState::Ready(_));
    ui.add_space(4.0);
    ui.horizontal_wrapped(|ui| {
        let paused = matches!(run.status, RunStatus::Paused(_));
        let mut button = |enabled: bool, label: &str, hover: Option<&str>, action: Action| {
            let mut r = ui.add_enabled(enabled, egui::Button::new(label));
            if let Some(h) = hover {
                r = r.on_hover_text(h);
            }
            if r.clicked() {
                actions.push(action);
            }
        };
        button(!busy && ready, "Start", None, Action::Start);
        button(busy && !paused, "Pause", None, Action::Send(Command::Pause));
        button(paused, "Resume", None, Action::Send(Command::Resume));
        button(
            paused,
            "Step",
            Some("Train one batch, then pause"),
            Action::Send(Command::Step),
        );
        button(
            busy,
            "Stop",
            Some("End the run; it can be continued later"),
            Action::Send(Command::Stop),
        );
        button(
            true,
            "Reset",
            Some("Stop and clear curves and previews"),
            Action::Reset,
        );
    });
    ui.add_enabled_ui(busy, |ui| {
        ui.horizontal(|ui| {
            let l = ui.label("Learning rate now");
            ui.add(
                egui::DragValue::new(lr_input)
                    .speed(1e-5)
                    .range(limits::LR_RANGE),
            )
            .labelled_by(l.id);
            if ui.button("Set").clicked() {
                actions.push(Action::Send(Command::SetLr(*lr_input)));
            }
        });
        ui.horizontal(|ui| {
            if ui.button("Save checkpoint").clicked() {
                actions.push(Action::Send(Command::SaveCheckpoint));
            }
            if ui
                .button("Measure now")
                .on_hover_text("kNN accuracy per stage and the gauges now, whatever the budget")
                .clicked()
            {
                actions.push(Action::Send(Command::MeasureNow));
            }
        });
    });
    ui.add_space(2.0);
}

fn settings(ui: &mut egui::Ui, c: &mut TrainConfig, actions: &mut Vec<Action>) {
    tasks(ui, c);
    let old_size = c.size;
    egui::Grid::new("settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Epochs");
        ui.add(
            egui::DragValue::new(&mut c.epochs)
                .range(limits::EPOCHS_RANGE)
                .custom_formatter(|v, _| epochs_text(v))
                .custom_parser(parse_epochs),
        )
        .labelled_by(l.id)
        .on_hover_text(
            "Epochs of the run; \"no limit\" (or 1000000 and more) trains until the time limit \
             or Stop",
        );
        ui.end_row();
        let l = ui.label("Batch");
        ui.add(egui::DragValue::new(&mut c.batch).range(limits::BATCH_RANGE))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Learning rate");
        ui.add(
            egui::DragValue::new(&mut c.lr)
                .speed(1e-5)
                .range(limits::LR_RANGE),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Image size");
        egui::ComboBox::from_id_salt("size")
            .selected_text(format!("{} px", c.size))
            .show_ui(ui, |ui| {
                for s in [16, 32, 48, 64, 96, 128, 192, 256] {
                    ui.selectable_value(&mut c.size, s, format!("{s} px"));
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut c.seed)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("LR schedule");
        egui::ComboBox::from_id_salt("lr_schedule")
            .selected_text(c.lr_schedule.to_string())
            .show_ui(ui, |ui| {
                for s in [LrSchedule::Cosine, LrSchedule::Constant] {
                    ui.selectable_value(&mut c.lr_schedule, s, s.to_string());
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text(
                "cosine: warm-up, then down to zero at the last epoch or the time limit; the \
                 learning rate is its peak",
            );
        ui.end_row();
        let mut limited = c.minutes.is_some();
        ui.checkbox(&mut limited, "Time limit");
        let mut minutes = c.minutes.unwrap_or(3.0);
        ui.add_enabled(
            limited,
            egui::DragValue::new(&mut minutes)
                .range(0.1..=10_000.0)
                .speed(0.1)
                .suffix(" min"),
        );
        c.minutes = limited.then_some(minutes);
        ui.end_row();
        let l = ui.label("Monitoring budget");
        ui.add(
            egui::DragValue::new(&mut c.monitor_budget)
                .range(limits::MONITOR_BUDGET_RANGE)
                .speed(0.5)
                .suffix(" %"),
        )
        .labelled_by(l.id)
        .on_hover_text(
            "The most of the run's time that kNN measurements, previews and checkpoints may \
             take; they wait when it is spent (100 %: after every epoch)",
        );
        ui.end_row();
        let l = ui.label("Keep checkpoints");
        ui.add(egui::DragValue::new(&mut c.keep_checkpoints).range(0..=100_000))
            .labelled_by(l.id)
            .on_hover_text(
                "The newest N checkpoints, besides the best by kNN top-1 of z and the resume \
                 checkpoint; older ones are removed (0 keeps all)",
            );
        ui.end_row();
        let l = ui.label("Device");
        egui::ComboBox::from_id_salt("device")
            .selected_text(c.device.to_string())
            .show_ui(ui, |ui| {
                for d in crate::model::device::ALL {
                    match crate::model::device::unavailable(d) {
                        None => {
                            ui.selectable_value(&mut c.device, d, d.to_string());
                        }
                        Some(reason) => {
                            // Listed, so that a person sees the GPU options exist and why
                            // this machine or build cannot give them.
                            ui.add_enabled(
                                false,
                                egui::Button::selectable(false, format!("{d} (unavailable)")),
                            )
                            .on_disabled_hover_text(reason);
                        }
                    }
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
    });
    if let Some(reason) = crate::model::device::unavailable(c.device) {
        // Settings saved on another machine (or by another build) can name a missing device.
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!("{} cannot be used here: {reason}", c.device),
        );
    }
    init_from(ui, c);
    task_settings(ui, c);
    if c.size != old_size {
        // The data is kept at the working size: load it again.
        actions.push(Action::OpenData(c.data.clone()));
    }
}

/// `20`, or `no limit` for a run only its time limit (or Stop) ends.
fn epochs_text(v: f64) -> String {
    if v >= limits::EPOCHS_UNTIL_TIME_LIMIT as f64 {
        "no limit".to_string()
    } else {
        format!("{v:.0}")
    }
}

/// A typed epoch count: a number (`1 000` too), or `no limit` / `∞`; anything from
/// [`limits::EPOCHS_UNTIL_TIME_LIMIT`] up (`inf`, `1e30`) is no limit, so the count of steps
/// cannot overflow.
fn parse_epochs(text: &str) -> Option<f64> {
    let unlimited = limits::EPOCHS_UNTIL_TIME_LIMIT as f64;
    let t = text.trim();
    if t.eq_ignore_ascii_case("no limit") || t == "∞" {
        return Some(unlimited);
    }
    let digits: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let v: f64 = digits.parse().ok()?;
    if v.is_nan() {
        None
    } else {
        Some(v.min(unlimited))
    }
}

fn tasks(ui: &mut egui::Ui, c: &mut TrainConfig) {
    ui.label("Tasks");
    ui.horizontal_wrapped(|ui| {
        for kind in TaskKind::ALL {
            let mut on = c.tasks.contains(&kind);
            if ui.checkbox(&mut on, kind.name()).changed() {
                if on {
                    c.tasks.push(kind);
                    c.tasks.sort();
                } else {
                    c.tasks.retain(|t| *t != kind);
                }
                c.task_weights = vec![1.0; c.tasks.len()];
            }
        }
    });
}

fn init_from(ui: &mut egui::Ui, c: &mut TrainConfig) {
    ui.horizontal(|ui| {
        let l = ui.label("Start from weights");
        let mut text = c
            .init_from
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if ui
            .add(
                egui::TextEdit::singleline(&mut text)
                    .hint_text("random, or a .safetensors path")
                    .desired_width(170.0),
            )
            .labelled_by(l.id)
            .on_hover_text("A pretext checkpoint or a PyTorch state_dict saved with safetensors")
            .changed()
        {
            c.init_from = if text.trim().is_empty() {
                None
            } else {
                Some(text.trim().into())
            };
        }
    });
}

fn task_settings(ui: &mut egui::Ui, c: &mut TrainConfig) {
    let t = &mut c.settings;
    egui::CollapsingHeader::new("Task settings").show(ui, |ui| {
        ui.add(
            egui::Slider::new(&mut t.temperature, limits::TEMPERATURE_RANGE)
                .logarithmic(true)
                .text("temperature τ"),
        );
        ui.horizontal(|ui| {
            ui.label("contrastive loss");
            for k in [ContrastiveLoss::NtXent, ContrastiveLoss::Dcl] {
                ui.selectable_value(&mut t.contrastive_loss, k, k.name())
                    .on_hover_text(match k {
                        ContrastiveLoss::NtXent => "NT-Xent / InfoNCE, as in SimCLR (the default)",
                        ContrastiveLoss::Dcl => {
                            "Decoupled contrastive loss (Yeh et al. 2022): the positive left \
                             out of the denominator"
                        }
                    });
            }
        });
        ui.horizontal(|ui| {
            ui.label("mask");
            for (k, name) in [
                (MaskKind::Center, "centre"),
                (MaskKind::Random, "random"),
                (MaskKind::Blocks, "blocks"),
            ] {
                ui.selectable_value(&mut t.mask, k, name);
            }
        });
        ui.add(egui::Slider::new(&mut t.mask_size, limits::MASK_SIZE_RANGE).text("mask size"));
        ui.add(
            egui::Slider::new(&mut t.color_threshold, limits::COLOR_THRESHOLD_RANGE)
                .logarithmic(true)
                .text("colour threshold (a*b*)"),
        );
        ui.add(egui::Slider::new(&mut t.patch_gap, limits::PATCH_GAP_RANGE).text("patch gap"));
        ui.add(
            egui::Slider::new(&mut t.momentum, limits::MOMENTUM_RANGE)
                .text("teacher momentum m (BYOL, MoCo)"),
        );
        let mut queue = t.queue_size as f64;
        let queue_range = limits::QUEUE_SIZE_LIMIT.range();
        if ui
            .add(
                egui::Slider::new(&mut queue, queue_range)
                    .logarithmic(true)
                    .integer()
                    .text("queue size (MoCo)"),
            )
            .changed()
        {
            t.queue_size = queue.round() as usize;
        }
        ui.add(
            egui::Slider::new(&mut t.barlow_lambda, limits::BARLOW_LAMBDA_RANGE)
                .logarithmic(true)
                .text("λ (Barlow Twins)"),
        );
        for (w, name) in t.vicreg_weights.iter_mut().zip([
            "invariance λ (VICReg)",
            "variance μ (VICReg)",
            "covariance ν (VICReg)",
        ]) {
            ui.add(egui::Slider::new(w, limits::VICREG_WEIGHT_RANGE).text(name));
        }
        ui.checkbox(&mut t.stop_gradient, "stop-gradient (SimSiam)")
            .on_hover_text("Off, SimSiam collapses: every image maps to the same point");
        ui.add(
            egui::Slider::new(
                &mut t.jigsaw_permutations,
                limits::JIGSAW_PERMUTATIONS_RANGE,
            )
            .logarithmic(true)
            .text("jigsaw permutations"),
        );
    });
    egui::CollapsingHeader::new("Augmentation strengths").show(ui, |ui| {
        let a = &mut t.augment;
        let p = limits::PROBABILITY_RANGE;
        let s = limits::JITTER_STRENGTH_RANGE;
        ui.add(
            egui::Slider::new(&mut a.crop_min_scale, limits::CROP_MIN_SCALE_RANGE)
                .text("crop min scale"),
        );
        ui.add(egui::Slider::new(&mut a.view_scale, limits::VIEW_SCALE_RANGE).text("view scale"))
            .on_hover_text(
                "Side of the views as a share of the working size: smaller views make a step \
                 cheaper; the encoder is still measured at the working size (FixRes)",
            );
        ui.add(egui::Slider::new(&mut a.flip_p, p.clone()).text("flip p"));
        ui.add(egui::Slider::new(&mut a.jitter_p, p.clone()).text("jitter p"));
        ui.add(egui::Slider::new(&mut a.brightness, s.clone()).text("brightness"));
        ui.add(egui::Slider::new(&mut a.contrast, s.clone()).text("contrast"));
        ui.add(egui::Slider::new(&mut a.saturation, s).text("saturation"));
        ui.add(egui::Slider::new(&mut a.hue, limits::HUE_RANGE).text("hue"));
        ui.add(egui::Slider::new(&mut a.gray_p, p.clone()).text("grey p"));
        ui.add(egui::Slider::new(&mut a.blur_p, p).text("blur p"));
    });
}

#[cfg(test)]
mod tests {
    use super::{epochs_text, parse_epochs};
    use crate::config::EPOCHS_UNTIL_TIME_LIMIT;

    #[test]
    fn epochs_read_and_show_no_limit() {
        let unlimited = EPOCHS_UNTIL_TIME_LIMIT as f64;
        assert_eq!(parse_epochs(" 20 "), Some(20.0));
        assert_eq!(parse_epochs("1 000"), Some(1000.0));
        for t in ["no limit", "No Limit", "∞", "inf", "1e30", "99999999"] {
            assert_eq!(parse_epochs(t), Some(unlimited), "{t}");
        }
        assert_eq!(parse_epochs("NaN"), None);
        assert_eq!(parse_epochs("twenty"), None);
        assert_eq!(epochs_text(20.0), "20");
        assert_eq!(epochs_text(unlimited), "no limit");
        assert_eq!(parse_epochs(&epochs_text(unlimited)), Some(unlimited));
    }
}
