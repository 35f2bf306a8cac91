//! The desktop explorer (eframe/egui). It never trains and never waits on the worker: it sends
//! [`Command`]s, drains [`Event`]s under a small time budget each frame, and repaints when the
//! worker or the loader says something happened.

mod explorer;
mod frame_stats;
pub mod history;
mod loader;
mod math_panel;
mod panels;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;

use crate::config::{DataSource, TaskKind, TrainConfig};
use crate::data::{Dataset, DatasetSummary};
use crate::tasks::{Canvas, Preview};
use crate::train::{Command, EpochSummary, Event, Outcome, PauseReason, StepMetrics, Trainer};
use frame_stats::FrameStats;
use history::History;
use loader::Loader;

/// Storage key of the persisted settings.
const STORAGE_KEY: &str = "pretext-settings";
/// Time the UI spends draining events per frame at most.
const EVENT_BUDGET: Duration = Duration::from_millis(4);
/// Points kept per curve.
const CURVE_CAPACITY: usize = 2000;
/// Recent folders remembered.
const RECENT_MAX: usize = 8;
/// Thumbnails drawn in the data panel at most.
pub const THUMBNAILS_MAX: usize = 400;

/// What survives a restart.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub config: TrainConfig,
    pub recent: Vec<String>,
    /// EMA weight for smoothed curves (0 = raw).
    pub smoothing: f64,
    pub log_scale: bool,
    /// Curves against epochs instead of steps.
    pub x_in_epochs: bool,
    pub show_frame_time: bool,
}

impl Default for Persisted {
    fn default() -> Self {
        Self {
            config: TrainConfig {
                epochs: 20,
                ..TrainConfig::default()
            },
            recent: Vec::new(),
            smoothing: 0.8,
            log_scale: false,
            x_in_epochs: false,
            show_frame_time: true,
        }
    }
}

/// Where the run stands, as the window shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    Idle,
    Starting,
    Running,
    Paused(PauseReason),
    Finished(Outcome),
}

/// A message for the person at the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub error: bool,
    pub text: String,
}

/// The loaded data and its thumbnails.
pub struct LoadedData {
    pub data: Arc<Dataset>,
    pub summary: DatasetSummary,
    thumbnails: Option<egui::TextureHandle>,
    thumb_cols: usize,
    /// Which data-set image each thumbnail shows (evenly spread over the set).
    thumb_indices: Vec<usize>,
}

pub enum DataState {
    Empty,
    Loading(Loader),
    Ready(LoadedData),
    Failed(String),
}

/// A preview turned into a texture.
pub struct PreviewView {
    pub caption: String,
    pub texture: egui::TextureHandle,
    pub size: [usize; 2],
}

/// The curves of a run.
#[derive(Default)]
pub struct Curves {
    /// Keyed by series name, e.g. `loss/rotation`.
    pub series: BTreeMap<String, History>,
    pub batches_per_epoch: usize,
    pub steps_seen: u64,
}

impl Curves {
    fn push(&mut self, name: String, x: f64, y: f64) {
        self.series
            .entry(name)
            .or_insert_with(|| History::new(CURVE_CAPACITY))
            .push(x, y);
    }

    fn add_step(&mut self, m: &StepMetrics) {
        let x = m.step as f64;
        for t in &m.tasks {
            self.push(format!("loss/{}", t.task), x, t.loss);
            let scale = if t.metric_info.percent { 100.0 } else { 1.0 };
            self.push(format!("metric/{}", t.task), x, t.metric * scale);
            if let Some(b) = t.baseline {
                self.push(format!("baseline/{}", t.task), x, b * scale);
            }
        }
        if m.tasks.len() > 1 {
            self.push("loss/total".into(), x, m.loss);
        }
        self.push("lr".into(), x, m.lr);
        self.push("images_per_s".into(), x, m.images_per_s);
        self.steps_seen += 1;
    }
}

pub struct PretextApp {
    pub settings: Persisted,
    trainer: Trainer,
    wake: Arc<dyn Fn() + Send + Sync>,
    pub path_input: String,
    pub run_input: String,
    pub data: DataState,
    pub status: RunStatus,
    pub run_dir: Option<PathBuf>,
    pub curves: Curves,
    pub previews: BTreeMap<TaskKind, PreviewView>,
    pub inspection: Option<(usize, Vec<PreviewView>)>,
    pub messages: Vec<Message>,
    pub last_step: Option<StepMetrics>,
    /// Raw pixels' kNN accuracy (%), the floor for the kNN curves.
    pub knn_pixels: Option<f64>,
    /// kNN accuracy of z before the first step (the random initialisation, for a new run).
    pub knn_start: Option<f64>,
    /// Why the kNN monitor gives no accuracies on this data, when it gives none.
    pub knn_not_measured: Option<String>,
    pub last_epoch: Option<EpochSummary>,
    pub lr_input: f64,
    pub zoom: Option<TaskKind>,
    pub tab: Tab,
    frame_stats: FrameStats,
    augment_view: Option<(u64, PreviewView)>,
    /// The frozen batch's derivations, what is selected in them, and the step shown.
    pub math: Option<crate::math::MathReport>,
    pub math_sel: crate::math::Selection,
    pub math_step: usize,
    math_textures: std::collections::HashMap<u64, egui::TextureHandle>,
    /// The whole data set in embedding space, and the explorer's selection.
    pub embedding: Option<crate::eval::embed::Embedding>,
    pub explorer_selected: Option<usize>,
    /// Nearest neighbours of the selected image, computed once per selection.
    explorer_neighbours: Option<(usize, Vec<(usize, f64)>)>,
    explorer_textures: std::collections::HashMap<usize, egui::TextureHandle>,
    augment_seed: u64,
    dialog: Option<crossbeam_channel::Receiver<Option<PathBuf>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Training,
    Augmentations,
    Inspect,
    Math,
    Explorer,
}

fn texture(ctx: &egui::Context, name: &str, c: &Canvas) -> egui::TextureHandle {
    let img = egui::ColorImage::from_rgb([c.width, c.height], &c.rgb);
    ctx.load_texture(name, img, egui::TextureOptions::NEAREST)
}

fn preview_view(ctx: &egui::Context, p: &Preview) -> PreviewView {
    PreviewView {
        caption: p.caption.clone(),
        texture: texture(ctx, &format!("preview-{}", p.task), &p.image),
        size: [p.image.width, p.image.height],
    }
}

impl PretextApp {
    /// The app with its persisted settings (from `storage`) and optionally a folder to open.
    pub fn new(
        ctx: &egui::Context,
        storage: Option<&dyn eframe::Storage>,
        open: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        install_math_font(ctx);
        let settings: Persisted = storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        let ctx2 = ctx.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx2.request_repaint());
        let trainer = Trainer::spawn_with_notify(wake.clone())?;
        let lr_input = settings.config.lr;
        let mut app = Self {
            settings,
            trainer,
            wake,
            path_input: String::new(),
            run_input: String::new(),
            data: DataState::Empty,
            status: RunStatus::Idle,
            run_dir: None,
            curves: Curves::default(),
            previews: BTreeMap::new(),
            inspection: None,
            messages: Vec::new(),
            last_step: None,
            knn_pixels: None,
            knn_start: None,
            knn_not_measured: None,
            last_epoch: None,
            lr_input,
            zoom: None,
            tab: Tab::Training,
            frame_stats: FrameStats::default(),
            augment_view: None,
            math: None,
            math_sel: crate::math::Selection::default(),
            math_step: 0,
            math_textures: std::collections::HashMap::new(),
            embedding: None,
            explorer_selected: None,
            explorer_neighbours: None,
            explorer_textures: std::collections::HashMap::new(),
            augment_seed: 1,
            dialog: None,
        };
        let source = match open {
            Some(p) => DataSource::Folder(p),
            None => app.settings.config.data.clone(),
        };
        app.open_data(source);
        Ok(app)
    }

    pub fn is_training(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Starting | RunStatus::Running | RunStatus::Paused(_)
        )
    }

    pub fn message(&mut self, error: bool, text: impl Into<String>) {
        let text = text.into();
        if self.messages.last().is_some_and(|m| m.text == text) {
            return;
        }
        self.messages.push(Message { error, text });
        if self.messages.len() > 200 {
            self.messages.remove(0);
        }
    }

    /// Starts loading a data source (cancelling any load under way).
    pub fn open_data(&mut self, source: DataSource) {
        if let DataState::Loading(l) = &self.data {
            l.cancel();
        }
        if let DataSource::Folder(p) = &source {
            self.path_input = p.display().to_string();
        }
        self.settings.config.data = source.clone();
        match Loader::start(source, self.settings.config.size, self.wake.clone()) {
            Ok(l) => self.data = DataState::Loading(l),
            Err(e) => self.data = DataState::Failed(format!("cannot start loading: {e}")),
        }
        self.inspection = None;
        self.augment_view = None;
        self.embedding = None;
        self.explorer_selected = None;
        self.explorer_textures.clear();
    }

    pub fn open_folder(&mut self, path: &Path) {
        self.open_data(DataSource::Folder(path.to_path_buf()));
    }

    fn remember_recent(&mut self, source: &DataSource) {
        if let DataSource::Folder(p) = source {
            let s = p.display().to_string();
            self.settings.recent.retain(|r| r != &s);
            self.settings.recent.insert(0, s);
            self.settings.recent.truncate(RECENT_MAX);
        }
    }

    /// Opens the system folder dialog on its own thread.
    pub fn pick_folder(&mut self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("pretext-dialog".into())
            .spawn(move || {
                let _ = tx.send(
                    rfd::FileDialog::new()
                        .set_title("Open a folder of images")
                        .pick_folder(),
                );
                wake();
            });
        match spawned {
            Ok(_) => self.dialog = Some(rx),
            Err(e) => self.message(true, format!("cannot open the folder dialog: {e}")),
        }
    }

    /// Starts training with the current settings.
    pub fn start(&mut self) {
        if self.is_training() {
            return;
        }
        let config = self.settings.config.clone();
        if let Err(e) = config.validate() {
            self.message(true, e);
            return;
        }
        self.reset_view();
        let cmd = match &self.data {
            DataState::Ready(d) if d.data.source == config.data && d.data.size == config.size => {
                Command::StartWithData(Box::new(config), d.data.clone())
            }
            _ => Command::Start(Box::new(config)),
        };
        self.send(cmd);
        self.status = RunStatus::Starting;
    }

    /// Continues a run directory (e.g. one the command line wrote): its curves and its model.
    pub fn continue_run(&mut self, dir: &Path, epochs: Option<usize>) {
        if self.is_training() {
            self.message(true, "stop the current run first");
            return;
        }
        self.reset_view();
        match crate::train::run_dir::read_metrics(dir) {
            Ok(rows) => {
                for r in rows {
                    let x = r.step as f64;
                    if r.task == "gauges" {
                        let d = (4 * crate::model::ENCODER_WIDTH) as f64;
                        match r.metric_name.as_str() {
                            "rankme" => self.curves.push("gauge/rankme".into(), x, r.metric / d),
                            "uniformity" => {
                                self.curves.push("gauge/uniformity".into(), x, r.metric);
                            }
                            "alignment" => {
                                self.curves.push("gauge/alignment".into(), x, r.metric);
                            }
                            _ => self.curves.push("gauge/std".into(), x, r.metric * d.sqrt()),
                        }
                        continue;
                    }
                    if r.task == "knn" {
                        let short = r.metric_name.trim_start_matches("knn_accuracy_");
                        if short == "raw_pixels" {
                            self.knn_pixels = Some(r.metric * 100.0);
                            continue;
                        }
                        if short == "l3" && r.step == 0 {
                            self.knn_start = Some(r.metric * 100.0);
                        }
                        if let Some(stage) = crate::eval::embed::STAGES
                            .iter()
                            .find(|s| s.starts_with(short))
                        {
                            self.curves
                                .push(format!("knn/{stage}"), x, r.metric * 100.0);
                        }
                        continue;
                    }
                    let metric = if r.percent {
                        r.metric * 100.0
                    } else {
                        r.metric
                    };
                    self.curves.push(format!("loss/{}", r.task), x, r.loss);
                    self.curves.push(format!("metric/{}", r.task), x, metric);
                    self.curves.push("lr".into(), x, r.lr);
                    self.curves.push("images_per_s".into(), x, r.images_per_s);
                }
            }
            Err(e) => self.message(true, e),
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(crate::train::run_dir::CONFIG_FILE))
            && let Ok(config) = serde_json::from_str::<TrainConfig>(&text)
        {
            let epochs = epochs.unwrap_or(config.epochs);
            self.settings.config = TrainConfig { epochs, ..config };
        }
        self.send(Command::Continue {
            run_dir: dir.to_path_buf(),
            epochs,
            lr: None,
        });
        self.status = RunStatus::Starting;
    }

    fn reset_view(&mut self) {
        self.curves = Curves::default();
        self.previews.clear();
        self.inspection = None;
        self.last_step = None;
        self.knn_pixels = None;
        self.knn_start = None;
        self.knn_not_measured = None;
        self.last_epoch = None;
        self.run_dir = None;
    }

    /// Stops any run and clears curves and previews.
    pub fn reset(&mut self) {
        if self.is_training() {
            self.send(Command::Stop);
        }
        self.reset_view();
        self.status = RunStatus::Idle;
    }

    pub fn send(&mut self, cmd: Command) {
        if !self.trainer.send(cmd) {
            self.message(
                true,
                "the training thread is not answering (its queue is full or it ended)",
            );
        }
    }

    /// Drains loader, dialog and worker events; never blocks.
    pub fn poll(&mut self, ctx: &egui::Context) {
        if let Some(rx) = &self.dialog
            && let Ok(choice) = rx.try_recv()
        {
            self.dialog = None;
            match choice {
                Some(p) => self.open_folder(&p),
                None => self.message(
                    false,
                    "no folder chosen (without a desktop portal or zenity the system dialog cannot open: \
                     type a path and press Open, or drop a folder on the window)",
                ),
            }
        }
        if let DataState::Loading(l) = &self.data
            && let Some(result) = l.poll()
        {
            match result {
                Ok((d, secs)) => {
                    let summary = d.summary(secs);
                    let source = d.source.clone();
                    if !summary.skipped.is_empty() {
                        self.message(
                            false,
                            format!(
                                "{} file(s) skipped (see the data panel)",
                                summary.skipped.len()
                            ),
                        );
                    }
                    let thumb_indices = panels::thumbnail_indices(d.len());
                    let (tex, cols) = panels::thumbnail_atlas(ctx, &d, &thumb_indices);
                    self.data = DataState::Ready(LoadedData {
                        data: Arc::new(d),
                        summary,
                        thumbnails: tex,
                        thumb_cols: cols,
                        thumb_indices,
                    });
                    self.remember_recent(&source);
                }
                Err(crate::data::DataError::Cancelled) => self.data = DataState::Empty,
                Err(e) => {
                    self.message(true, e.to_string());
                    self.data = DataState::Failed(e.to_string());
                }
            }
        }
        let start = Instant::now();
        while start.elapsed() < EVENT_BUDGET {
            let Ok(event) = self.trainer.events().try_recv() else {
                break;
            };
            self.handle(ctx, event);
        }
        if !self.trainer.events().is_empty() {
            ctx.request_repaint();
        }
    }

    fn handle(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::Loading { .. } | Event::DataReady(_) | Event::CheckpointSaved { .. } => {
                // Epoch checkpoints are routine; a checkpoint asked for is worth a message.
                if let Event::CheckpointSaved { path, .. } = event
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                {
                    self.message(false, format!("checkpoint saved: {}", path.display()));
                }
            }
            Event::RunStarted {
                run_dir,
                batches_per_epoch,
                start_step,
                ..
            } => {
                self.curves.batches_per_epoch = batches_per_epoch;
                self.status = RunStatus::Running;
                let verb = if start_step > 0 {
                    "continuing"
                } else {
                    "run directory"
                };
                self.message(false, format!("{verb}: {}", run_dir.display()));
                self.run_dir = Some(run_dir);
            }
            Event::Step(m) => {
                self.curves.add_step(&m);
                self.last_step = Some(m);
            }
            Event::Epoch(e) => self.last_epoch = Some(e),
            Event::Preview(p) => {
                let view = preview_view(ctx, &p);
                self.previews.insert(p.task, view);
            }
            Event::Knn(k) => {
                let x = k.step as f64;
                self.knn_not_measured = k.not_measured.map(|why| why.to_string());
                for (stage, acc) in &k.stages {
                    self.curves.push(format!("knn/{stage}"), x, acc * 100.0);
                }
                if let Some(p) = k.raw_pixels {
                    // Measured once, before the first step: also z of the initial weights.
                    self.knn_pixels = Some(p * 100.0);
                    self.knn_start = k.stages.last().map(|s| s.1 * 100.0);
                }
                let g = &k.gauges;
                self.curves.push(
                    "gauge/rankme".into(),
                    x,
                    g.rankme / g.dimensions.max(1) as f64,
                );
                self.curves.push(
                    "gauge/std".into(),
                    x,
                    g.std_of_l2_normalized / g.std_reference.max(1e-12),
                );
                self.curves.push("gauge/uniformity".into(), x, g.uniformity);
                if let Some(a) = g.alignment {
                    self.curves.push("gauge/alignment".into(), x, a);
                }
                if crate::eval::embed::collapsed(g) {
                    self.message(
                        true,
                        format!(
                            "the representation is collapsing at step {} (RankMe {:.1}, std of L2-normalised z {:.4}): \
                             try a lower learning rate or another task",
                            k.step, g.rankme, g.std_of_l2_normalized
                        ),
                    );
                }
            }
            Event::Embedding(e) => {
                if self.explorer_selected.is_some_and(|i| i >= e.z.len()) {
                    self.explorer_selected = None;
                }
                self.explorer_neighbours = None;
                self.embedding = Some(*e);
                self.tab = Tab::Explorer;
            }
            Event::Math(report) => {
                self.math_textures.clear();
                if self.math_sel.task >= report.tasks.len() {
                    self.math_sel = crate::math::Selection::default();
                }
                self.math = Some(*report);
                self.tab = Tab::Math;
            }
            Event::Inspection { indices, previews } => {
                let views = previews.iter().map(|p| preview_view(ctx, p)).collect();
                self.inspection = indices.first().map(|&i| (i, views));
            }
            Event::Paused { reason, .. } => self.status = RunStatus::Paused(reason),
            Event::Resumed => self.status = RunStatus::Running,
            Event::LrChanged(lr) => self.message(false, format!("learning rate is now {lr:e}")),
            Event::Warning(w) => self.message(false, w),
            Event::Error(e) => self.message(true, e),
            Event::Finished { outcome, .. } => {
                if outcome == Outcome::Completed {
                    self.message(false, "training finished");
                }
                self.status = RunStatus::Finished(outcome);
            }
        }
    }

    /// Asks for every task's prediction on data-set image `index`.
    pub fn inspect(&mut self, index: usize) {
        if self.is_training() {
            self.send(Command::Inspect(vec![index]));
            self.tab = Tab::Inspect;
        } else {
            self.message(
                false,
                "start a run to see the tasks' predictions for an image",
            );
        }
    }

    /// Frame-time summary (median, p95) in ms over the recent frames.
    pub fn frame_time(&self) -> Option<(f32, f32)> {
        self.frame_stats.summary()
    }
}

impl eframe::App for PretextApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        panels::dropped_folder(self, ui);
        panels::top_bar(self, ui);
        panels::status_bar(self, ui);
        egui::Panel::left("controls")
            .default_size(330.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    panels::data_panel(self, ui);
                    ui.separator();
                    panels::controls(self, ui);
                });
            });
        egui::CentralPanel::default_margins().show(ui, |ui| panels::central(self, ui));
        panels::zoom_window(self, ui);
        if matches!(self.data, DataState::Loading(_)) {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        let own = frame.info().cpu_usage.unwrap_or(0.0);
        self.frame_stats.record(own.max(t0.elapsed().as_secs_f32()));
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.settings);
    }

    fn on_exit(&mut self) {
        if std::env::var_os("PRETEXT_FRAME_STATS").is_some()
            && let Some((median, p95)) =
                frame_stats::percentiles(self.frame_stats.all.iter().copied())
        {
            // A closed standard error is no reason to panic on the way out.
            let _ = writeln!(
                std::io::stderr(),
                "frame time over {} frames: median {median:.2} ms, 95th percentile {p95:.2} ms",
                self.frame_stats.all.len()
            );
        }
    }
}

/// DejaVu Sans as a fallback after egui's own fonts, for the mathematical symbols egui's
/// default fonts lack (superscripts, ‖, ∇, ∑ …).
fn install_math_font(ctx: &egui::Context) {
    use egui::epaint::text::{FontInsert, FontPriority, InsertFontFamily};
    const DEJAVU: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
    let families = [egui::FontFamily::Proportional, egui::FontFamily::Monospace]
        .into_iter()
        .map(|family| InsertFontFamily {
            family,
            priority: FontPriority::Lowest,
        })
        .collect();
    ctx.add_font(FontInsert::new(
        "DejaVuSans",
        egui::FontData::from_static(DEJAVU),
        families,
    ));
}

/// Opens the window; `open` is a folder given on the command line.
pub fn run(open: Option<PathBuf>) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("pretext — self-supervised learning lab")
            .with_inner_size([1400.0, 900.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "pretext",
        options,
        Box::new(move |cc| {
            let app = PretextApp::new(&cc.egui_ctx, cc.storage, open)?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
