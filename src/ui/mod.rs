//! The desktop app (eframe/egui). It never trains and never waits: each frame it drains the
//! engine's [`Event`]s into the [`RunView`] under a small time budget, draws the panels — which
//! read the model and their own tab state and return [`Action`]s — and then performs those
//! actions in one place ([`PretextApp::perform`]): commands to the engine, loads, dialogs, and
//! file writes or other slow work on background threads ([`jobs`]).

mod actions;
pub mod contest;
mod frame_stats;
mod jobs;
mod panels;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;

use crate::config::{TaskKind, TrainConfig};
use crate::data::loader::Loader;
use crate::data::{Dataset, DatasetSummary};
use crate::tasks::{Canvas, Preview};
use crate::train::{Event, Trainer};
pub use crate::view::{Curves, Message, RunStatus, RunView};
pub use actions::Action;
use frame_stats::FrameStats;

/// Storage key of the persisted settings.
const STORAGE_KEY: &str = "pretext-settings";
/// Time the UI spends draining events per frame at most.
const EVENT_BUDGET: Duration = Duration::from_millis(4);
/// Recent folders remembered.
const RECENT_MAX: usize = 8;
/// Thumbnails drawn in the data panel at most.
pub const THUMBNAILS_MAX: usize = 400;
/// While a folder loads, the thumbnails of the images so far are remade at most this often.
const LOADING_THUMBNAILS_EVERY: Duration = Duration::from_millis(500);
/// The window redraws at most this often for what the threads report (events ask for a
/// repaint; the repaint itself waits for this interval), and this often while a folder loads.
const REPAINT_INTERVAL: Duration = Duration::from_millis(100);
/// While training with nobody touching the window, it redraws for the engine's events at most
/// this often: a frame drawn by a software renderer (Mesa's llvmpipe) costs about 0.1–0.2 s of
/// CPU time at 1400 × 900, taken from the step on a 2-core machine, so at the 0.1 s pace the
/// window cost a seventh of the training throughput, and at 1 s still 13–17% of the default
/// recipe's (benches/window_share.sh).
const TRAINING_REPAINT_INTERVAL: Duration = Duration::from_millis(2000);
/// For this long after the person's last input the window keeps the quick pace, so what they
/// did (Pause, a tab) shows at once.
const INTERACTION_WINDOW: Duration = Duration::from_secs(3);

/// How long the engine's events let the window wait before it redraws: set by the UI thread
/// each frame, read by the threads' wake-ups.
#[derive(Default)]
struct RepaintPace {
    slow: std::sync::atomic::AtomicBool,
}

impl RepaintPace {
    fn interval(&self) -> Duration {
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) {
            TRAINING_REPAINT_INTERVAL
        } else {
            REPAINT_INTERVAL
        }
    }
}

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
    /// The contest form's choices.
    pub contest: contest::ContestForm,
}

impl Default for Persisted {
    fn default() -> Self {
        Self {
            // The same new run as `pretext train` with no options.
            config: TrainConfig::default(),
            recent: Vec::new(),
            smoothing: 0.8,
            log_scale: false,
            x_in_epochs: false,
            show_frame_time: true,
            contest: contest::ContestForm::default(),
        }
    }
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

/// A data set being loaded, and the thumbnails of the images that have arrived so far.
pub struct LoadingData {
    pub loader: Loader,
    thumbnails: Option<egui::TextureHandle>,
    /// How many images the thumbnails show.
    pub thumbnail_count: usize,
    /// The glimpse's version the thumbnails were made from, and when.
    made: Option<(u64, Instant)>,
}

impl LoadingData {
    fn new(loader: Loader) -> Self {
        Self {
            loader,
            thumbnails: None,
            thumbnail_count: 0,
            made: None,
        }
    }
}

/// Where the window's data stands: none, loading (with the thumbnails so far), loaded (with
/// thumbnails) or failed.
pub enum DataState {
    Empty,
    Loading(LoadingData),
    Ready(LoadedData),
    Failed(String),
}

/// A picture turned into a texture.
pub struct PreviewView {
    pub caption: String,
    pub texture: egui::TextureHandle,
    pub size: [usize; 2],
    /// Where its images' pixels can be clicked, for tasks that show something per pixel.
    pub pixels: Option<crate::tasks::PixelGrid>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Training,
    Augmentations,
    Inspect,
    Math,
    Explorer,
    Runs,
}

/// What is typed into the window's text fields.
#[derive(Default)]
pub struct Inputs {
    pub path: String,
    pub run: String,
    /// The runs folder the runs view lists.
    pub runs_root: String,
    /// The learning rate to set on the running run.
    pub lr: f64,
}

/// The Augmentations tab: its seed and the picture for the settings it was made with.
pub struct AugmentTab {
    pub seed: u64,
    /// The settings' key of the shown picture, and the picture.
    pub view: Option<(u64, PreviewView)>,
    /// The key of a picture being made on a background thread.
    pub pending: Option<u64>,
}

/// The Math tab: the frozen batch's derivations, what is selected, the step shown.
#[derive(Default)]
pub struct MathTab {
    pub report: Option<crate::math::MathReport>,
    pub sel: crate::math::Selection,
    pub step: usize,
    textures: HashMap<u64, egui::TextureHandle>,
}

/// Which 2-D map of z the explorer draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapKind {
    #[default]
    Pca,
    Tsne,
}

/// The explorer's t-SNE of the embedding of one step: computing (with the iterations done so
/// far), done, or failed.
#[derive(Clone, Debug)]
pub enum TsneMap {
    Running {
        step: u64,
        epochs_done: Arc<std::sync::atomic::AtomicUsize>,
    },
    Ready {
        step: u64,
        points: Vec<[f64; 2]>,
        /// Trustworthiness T(5) of the map (not measured above a few thousand images).
        trust: Option<f64>,
    },
    Failed {
        step: u64,
        why: String,
    },
}

impl TsneMap {
    /// The embedding step it belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Self::Running { step, .. } | Self::Ready { step, .. } | Self::Failed { step, .. } => {
                *step
            }
        }
    }
}

/// The Explorer tab: the embedding of the data set and the selection in it.
#[derive(Default)]
pub struct ExplorerTab {
    pub embedding: Option<crate::eval::embed::Embedding>,
    pub map: MapKind,
    /// The t-SNE of the embedding, once asked for.
    pub tsne: Option<TsneMap>,
    pub selected: Option<usize>,
    /// Nearest neighbours of the selected image, computed once per selection.
    neighbours: Option<(usize, Vec<(usize, f64)>)>,
    textures: HashMap<usize, egui::TextureHandle>,
}

/// A column of the runs view's table, to sort by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunColumn {
    #[default]
    Name,
    Tasks,
    Data,
    Size,
    Steps,
    Time,
    Loss,
    Proxy,
    Knn,
    Probe,
}

/// The Runs tab: every run directory under the runs folder, the ones ticked to overlay (each
/// followed as it is written), and how they are drawn.
pub struct RunsTab {
    pub list: Vec<crate::runs::RunSummary>,
    pub sort: RunColumn,
    pub descending: bool,
    /// The ticked runs, in the order they were ticked (their colours), each as its own run
    /// model fed from its directory.
    pub ticked: Vec<(std::path::PathBuf, RunView)>,
    pub x_axis: crate::view::XAxis,
    /// The encoder stage whose kNN top-1 is overlaid (index into STAGES; z by default).
    pub stage: usize,
    pub gauge: crate::view::overlay::Gauge,
    /// The contest started from this tab, if any.
    pub contest: contest::ContestView,
}

impl Default for RunsTab {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            sort: RunColumn::Name,
            descending: true,
            ticked: Vec::new(),
            x_axis: crate::view::XAxis::Step,
            stage: crate::eval::embed::STAGES.len() - 1,
            gauge: crate::view::overlay::Gauge::RankMe,
            contest: contest::ContestView::default(),
        }
    }
}

impl RunsTab {
    /// The ticked run of `dir`.
    pub fn ticked_mut(&mut self, dir: &std::path::Path) -> Option<&mut RunView> {
        self.ticked
            .iter_mut()
            .find(|(d, _)| d == dir)
            .map(|(_, v)| v)
    }

    pub fn is_ticked(&self, dir: &std::path::Path) -> bool {
        self.ticked.iter().any(|(d, _)| d == dir)
    }

    /// The ticked runs' lines for one quantity, named by their directories.
    pub fn overlay(
        &self,
        quantity: crate::view::overlay::Quantity,
        smoothing: f64,
    ) -> Vec<crate::view::overlay::OverlayLine> {
        crate::view::overlay::overlay(
            self.ticked.iter().map(|(d, v)| (run_name(d), v)),
            quantity,
            self.x_axis,
            smoothing,
        )
    }
}

/// A run directory's name, as the runs view shows it.
pub fn run_name(dir: &std::path::Path) -> &str {
    dir.file_name().and_then(|n| n.to_str()).unwrap_or("run")
}

/// What the window shows beside the run: the tab, its states and the textures.
pub struct Tabs {
    pub tab: Tab,
    /// The preview shown enlarged.
    pub zoom: Option<TaskKind>,
    /// Textures of the run's newest previews.
    pub previews: BTreeMap<TaskKind, PreviewView>,
    /// Every task's predictions for one data-set image.
    pub inspection: Option<(usize, Vec<PreviewView>)>,
    pub augment: AugmentTab,
    pub math: MathTab,
    pub explorer: ExplorerTab,
    pub runs: RunsTab,
}

/// The threads and channels the app talks to.
struct Engine {
    trainer: Trainer,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// How soon `wake` redraws: slower while training unattended.
    pace: Arc<RepaintPace>,
    /// When the person last moved, clicked or typed in the window.
    last_input: Instant,
    dialog: Option<crossbeam_channel::Receiver<Option<PathBuf>>>,
    jobs: jobs::Jobs,
    /// Reads run directories: the runs folder's listing and the runs followed.
    watcher: crate::runs::watch::Watcher,
    /// Runs that Reset stopped and whose last events (their last steps, their end) are still
    /// to come: the worker's events are dropped until that many `Finished` have arrived, so a
    /// run started at once never shows them as its own.
    stale_runs: u32,
}

/// The desktop app: the run model, the data, the settings and per-tab state it draws, and the
/// handles of the threads it talks to.
pub struct PretextApp {
    pub settings: Persisted,
    /// The run as the engine reported it (status, curves, kNN, previews, messages).
    pub run: RunView,
    pub data: DataState,
    pub inputs: Inputs,
    pub tabs: Tabs,
    /// The run directory shown in the Training tab while another process writes it.
    pub following: Option<PathBuf>,
    engine: Engine,
    frame_stats: FrameStats,
    /// What the command line asked the window to do by itself (`--start`, `--quit-after-run`).
    launch: LaunchState,
    /// While a continued run's settings fill the left panel: the person's own (restored when
    /// that run ends, and the ones saved meanwhile) and the run's as shown (an edit of them
    /// keeps the edit instead).
    own_settings: Option<(crate::config::TrainConfig, crate::config::TrainConfig)>,
    /// A Continue whose run is still being read back (its number): the worker has not been
    /// asked for anything yet, and a Reset meanwhile drops the read-back.
    pending_replay: Option<u64>,
    replays: u64,
}

/// How the window starts: what the command line asked of it (`pretext [PATH] [--start] …`).
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// A folder to open instead of the saved data.
    pub open: Option<PathBuf>,
    /// Start training as soon as the data has loaded.
    pub start: bool,
    /// Close the window when the run that `start` began has ended.
    pub quit_after_run: bool,
    /// Train these tasks (each with weight 1) instead of the saved choice.
    pub tasks: Option<Vec<crate::config::TaskKind>>,
    /// End each run after this many minutes of training.
    pub minutes: Option<f64>,
    /// Train for this many epochs.
    pub epochs: Option<usize>,
}

/// The part of [`Launch`] still to be carried out, and what it changed in the settings.
#[derive(Default)]
struct LaunchState {
    start_pending: bool,
    /// Only with `--start`: the window closes once the start is done and no run trains.
    quit_after_run: bool,
    /// The settings the command line set for this session (as given, and as saved before),
    /// which are not saved unless the person changes them in the window.
    overrides: Option<(LaunchFields, LaunchFields)>,
}

/// The settings [`Launch`] can set.
#[derive(Clone, PartialEq)]
struct LaunchFields {
    tasks: Vec<crate::config::TaskKind>,
    task_weights: Vec<f64>,
    minutes: Option<f64>,
    epochs: usize,
}

impl LaunchFields {
    fn of(c: &TrainConfig) -> Self {
        Self {
            tasks: c.tasks.clone(),
            task_weights: c.task_weights.clone(),
            minutes: c.minutes,
            epochs: c.epochs,
        }
    }

    /// The settings to save: each field the command line set and the person left as it was
    /// goes back to its saved value.
    fn restore(given: &Self, saved: &Self, c: &mut TrainConfig) {
        if c.tasks == given.tasks && c.task_weights == given.task_weights {
            c.tasks.clone_from(&saved.tasks);
            c.task_weights.clone_from(&saved.task_weights);
        }
        if c.minutes == given.minutes {
            c.minutes = saved.minutes;
        }
        if c.epochs == given.epochs {
            c.epochs = saved.epochs;
        }
    }
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
        pixels: p.pixels.clone(),
    }
}

impl PretextApp {
    /// The app with its persisted settings (from `storage`) and optionally a folder to open.
    ///
    /// # Errors
    /// When the training thread cannot be started.
    pub fn new(
        ctx: &egui::Context,
        storage: Option<&dyn eframe::Storage>,
        open: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Self::launch(
            ctx,
            storage,
            Launch {
                open,
                ..Launch::default()
            },
        )
    }

    /// The app as the command line asked for it: a folder to open, settings for this session,
    /// and whether to start training by itself (and close when that run ends).
    ///
    /// # Errors
    /// When the training thread cannot be started.
    pub fn launch(
        ctx: &egui::Context,
        storage: Option<&dyn eframe::Storage>,
        launch: Launch,
    ) -> anyhow::Result<Self> {
        install_math_font(ctx);
        let mut settings: Persisted = storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        let saved_fields = LaunchFields::of(&settings.config);
        if let Some(tasks) = launch.tasks.filter(|t| !t.is_empty()) {
            settings.config.task_weights = vec![1.0; tasks.len()];
            settings.config.tasks = tasks;
        }
        if let Some(m) = launch.minutes {
            settings.config.minutes = Some(m);
        }
        // `--minutes` alone: the run lasts those minutes (as `pretext train --minutes`).
        settings.config.epochs =
            crate::config::epochs_for(launch.epochs, launch.minutes, settings.config.epochs);
        let given_fields = LaunchFields::of(&settings.config);
        let overrides = (given_fields != saved_fields).then_some((given_fields, saved_fields));
        let open = launch.open;
        let ctx2 = ctx.clone();
        let pace = Arc::new(RepaintPace::default());
        let pace2 = pace.clone();
        let wake: Arc<dyn Fn() + Send + Sync> =
            Arc::new(move || ctx2.request_repaint_after(pace2.interval()));
        let trainer = Trainer::spawn_with_notify(wake.clone())?;
        let watcher = crate::runs::watch::Watcher::spawn(wake.clone())?;
        let inputs = Inputs {
            lr: settings.config.lr,
            runs_root: settings.config.out.display().to_string(),
            ..Inputs::default()
        };
        watcher.send(crate::runs::watch::WatchCommand::Root(
            settings.config.out.clone(),
        ));
        let source = match open {
            Some(p) => crate::config::DataSource::Folder(p),
            None => settings.config.data.clone(),
        };
        let mut app = Self {
            settings,
            run: RunView::default(),
            data: DataState::Empty,
            inputs,
            tabs: Tabs {
                tab: Tab::Training,
                zoom: None,
                previews: BTreeMap::new(),
                inspection: None,
                augment: AugmentTab {
                    seed: 1,
                    view: None,
                    pending: None,
                },
                math: MathTab::default(),
                explorer: ExplorerTab::default(),
                runs: RunsTab::default(),
            },
            following: None,
            engine: Engine {
                trainer,
                watcher,
                jobs: jobs::Jobs::new(wake.clone()),
                wake,
                pace,
                last_input: Instant::now(),
                dialog: None,
                stale_runs: 0,
            },
            frame_stats: FrameStats::default(),
            launch: LaunchState {
                start_pending: launch.start,
                quit_after_run: launch.start && launch.quit_after_run,
                overrides,
            },
            own_settings: None,
            pending_replay: None,
            replays: 0,
        };
        app.perform(Action::OpenData(source));
        Ok(app)
    }

    pub fn is_training(&self) -> bool {
        self.run.is_training()
    }

    /// How long the engine's events let the window wait before it redraws now: 2 s while a run
    /// trains and nobody has touched the window for 3 s, else 0.1 s.
    pub fn repaint_interval(&self) -> Duration {
        self.engine.pace.interval()
    }

    /// Frame-time summary (median, p95) in ms over the recent frames.
    pub fn frame_time(&self) -> Option<(f32, f32)> {
        self.frame_stats.summary()
    }

    /// One event: into the run model, then what only the window does with it (textures, the
    /// answers to its own requests).
    fn handle(&mut self, ctx: &egui::Context, event: Event) {
        if self.engine.stale_runs > 0 {
            if matches!(event, Event::Finished { .. }) {
                self.engine.stale_runs -= 1;
            }
            return;
        }
        self.run.apply(&event);
        if matches!(event, Event::Finished { .. }) {
            self.restore_own_settings();
        }
        let t = &mut self.tabs;
        match event {
            Event::Preview(p) => {
                t.previews.insert(p.task, preview_view(ctx, &p));
            }
            Event::Embedding(e) => {
                let x = &mut t.explorer;
                if x.selected.is_some_and(|i| i >= e.z.len()) {
                    x.selected = None;
                }
                x.neighbours = None;
                x.embedding = Some(*e);
                t.tab = Tab::Explorer;
            }
            Event::Math(report) => {
                let m = &mut t.math;
                m.textures.clear();
                if m.sel.task >= report.tasks.len() {
                    m.sel = crate::math::Selection::default();
                }
                m.report = Some(*report);
                t.tab = Tab::Math;
            }
            Event::Inspection { indices, previews } => {
                let views = previews.iter().map(|p| preview_view(ctx, p)).collect();
                t.inspection = indices.first().map(|&i| (i, views));
            }
            _ => {}
        }
    }

    /// Drains the loader, the dialog, background jobs and the engine's events; never blocks.
    pub fn poll(&mut self, ctx: &egui::Context) {
        self.poll_dialog(ctx);
        self.poll_loader(ctx);
        for done in self.engine.jobs.finished() {
            self.job_done(ctx, done);
        }
        let start = Instant::now();
        while start.elapsed() < EVENT_BUDGET {
            let Ok(update) = self.engine.watcher.updates().try_recv() else {
                break;
            };
            self.watched(ctx, update);
        }
        while start.elapsed() < EVENT_BUDGET {
            let Some(message) = self
                .tabs
                .runs
                .contest
                .thread
                .as_ref()
                .and_then(|t| t.events().try_recv().ok())
            else {
                break;
            };
            self.contest_message(message);
        }
        while start.elapsed() < EVENT_BUDGET {
            let Ok(event) = self.engine.trainer.events().try_recv() else {
                break;
            };
            self.handle(ctx, event);
        }
        if !self.engine.trainer.events().is_empty() {
            ctx.request_repaint_after(self.engine.pace.interval());
        }
        self.carry_out_launch(ctx);
    }

    /// `--start`: starts training once the data is ready (or gives up if it failed to load);
    /// `--quit-after-run`: closes the window once that run has ended.
    fn carry_out_launch(&mut self, ctx: &egui::Context) {
        let l = &mut self.launch;
        if l.start_pending {
            match &self.data {
                DataState::Ready(_) => {
                    l.start_pending = false;
                    self.start();
                }
                DataState::Failed(_) | DataState::Empty => l.start_pending = false,
                DataState::Loading(_) => {}
            }
            return;
        }
        if l.quit_after_run && !self.run.is_training() {
            l.quit_after_run = false;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

impl eframe::App for PretextApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let touched =
            ctx.input(|i| !i.events.is_empty() || i.pointer.is_moving() || i.pointer.any_down());
        if touched {
            self.engine.last_input = Instant::now();
        }
        let unattended = self.engine.last_input.elapsed() > INTERACTION_WINDOW;
        self.engine.pace.slow.store(
            unattended && self.is_training(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        let actions = panels::draw(self, ui);
        for a in actions {
            self.perform(a);
        }
        if matches!(self.data, DataState::Loading(_)) || self.engine.jobs.busy() {
            ui.ctx().request_repaint_after(REPAINT_INTERVAL);
        }
        let own = frame.info().cpu_usage.unwrap_or(0.0);
        self.frame_stats
            .record(own.max(t0.elapsed().as_secs_f32()), self.is_training());
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        let mut settings = self.settings.clone();
        // A continued run's settings are its own, not the person's next run's.
        if let Some((own, shown)) = &self.own_settings
            && settings.config == *shown
        {
            settings.config = own.clone();
        }
        if let Some((given, saved)) = &self.launch.overrides {
            LaunchFields::restore(given, saved, &mut settings.config);
        }
        eframe::set_value(storage, STORAGE_KEY, &settings);
    }

    fn on_exit(&mut self) {
        // PRETEXT_FRAME_STATS=1 prints the frame times' summary on exit; a path ending in
        // .csv also gets every frame's time there.
        if let Some(v) = std::env::var_os("PRETEXT_FRAME_STATS") {
            let path = PathBuf::from(&v);
            if path.extension().is_some_and(|e| e == "csv") {
                let _ = self.frame_stats.write_csv(&path);
            }
            // A closed standard error is no reason to panic on the way out.
            let _ = writeln!(std::io::stderr(), "{}", self.frame_stats.report());
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

/// Opens the window as the command line asked (`launch`: a folder to open, settings for this
/// session, starting by itself).
///
/// # Errors
/// When the window cannot be opened.
pub fn run(launch: Launch) -> anyhow::Result<()> {
    crate::model::kernels::yield_to_drawing();
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
            let app = PretextApp::launch(&cc.egui_ctx, cc.storage, launch)?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
