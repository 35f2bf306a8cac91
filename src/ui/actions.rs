//! What the panels ask for, and the one place that does it: commands to the engine, data loads,
//! the folder dialog, and the slow or blocking work (reading a run directory back, writing
//! embeddings, drawing augmentation views) on background threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui;

use super::contest::{ContestMessage, ContestStart, ContestThread};
use super::jobs::Done;
use super::{DataState, LoadedData, Loader, PretextApp, PreviewView, RECENT_MAX, RunStatus, Tab};
use crate::config::DataSource;
use crate::runs::watch::{WatchCommand, WatchUpdate};
use crate::train::Command;

/// Something a panel asks for; [`PretextApp::perform`] carries it out after drawing.
#[derive(Clone, Debug)]
pub enum Action {
    /// Load a data source at the configured working size (cancelling a load under way).
    OpenData(DataSource),
    /// Open the system folder dialog.
    PickFolder,
    CancelLoading,
    /// Start a run with the current settings.
    Start,
    /// Read a run directory back (its curves) and continue training it.
    ContinueRun {
        dir: PathBuf,
        epochs: Option<usize>,
    },
    /// Stop any run and clear what it showed.
    Reset,
    /// A command for the engine as it is (pause, resume, step, stop, learning rate, …).
    Send(Command),
    /// Every task's prediction for this data-set image.
    Inspect(usize),
    /// Write the embedding's z with names and labels into the run directory.
    ExportEmbeddings,
    /// Draw augmented views for the current settings; `key` identifies them.
    AugmentViews {
        key: u64,
    },
    /// Compute the t-SNE map of the explorer's embedding in the background.
    Tsne,
    /// Tick or untick a run in the runs view (its curves overlaid, followed as it grows).
    ToggleRun(PathBuf),
    /// Show a run directory in the Training tab and follow it as another process writes it.
    FollowRun(PathBuf),
    /// Stop following the run shown in the Training tab.
    StopFollowing,
    /// List the runs under this folder.
    SetRunsRoot(PathBuf),
    /// Start a contest between the form's tasks on the loaded data with the current settings.
    StartContest,
    /// Stop the contest after the running task's current step (it can be resumed).
    StopContest,
    /// Resume the contest in this folder.
    ResumeContest(PathBuf),
    /// Remove the image cache's files (on a background job).
    ClearImageCache,
}

impl PretextApp {
    /// Carries out one action.
    pub fn perform(&mut self, action: Action) {
        match action {
            Action::OpenData(source) => self.open_data(source),
            Action::PickFolder => self.pick_folder(),
            Action::CancelLoading => {
                if let DataState::Loading(l) = &self.data {
                    l.loader.cancel();
                }
            }
            Action::ClearImageCache => self.clear_image_cache(),
            Action::Start => self.start(),
            Action::ContinueRun { dir, epochs } => self.continue_run(&dir, epochs),
            Action::Reset => self.reset(),
            Action::Send(cmd) => {
                self.send(cmd);
            }
            Action::Inspect(i) => self.inspect(i),
            Action::ExportEmbeddings => self.export_embeddings(),
            Action::AugmentViews { key } => self.augment_views(key),
            Action::Tsne => self.tsne(),
            Action::ToggleRun(dir) => self.toggle_run(dir),
            Action::FollowRun(dir) => self.follow_run(dir),
            Action::StopFollowing => self.stop_following(),
            Action::StartContest => self.start_contest(),
            Action::StopContest => {
                if let Some(t) = &self.tabs.runs.contest.thread {
                    t.stop();
                    self.tabs.runs.contest.status = "stopping after the current step…".into();
                }
            }
            Action::ResumeContest(dir) => self.spawn_contest(ContestStart::Resume(dir)),
            Action::SetRunsRoot(root) => {
                self.inputs.runs_root = root.display().to_string();
                self.tabs.runs.list.clear();
                self.watch(WatchCommand::Root(root));
            }
        }
    }

    fn watch(&mut self, command: WatchCommand) {
        if !self.engine.watcher.send(command) {
            self.run.message(
                true,
                "the thread that reads run directories is not answering",
            );
        }
    }

    /// Starts a contest between the form's tasks, on the loaded data, with the settings on the
    /// left (data, size, batch, seed, device, task settings), under the runs folder.
    fn start_contest(&mut self) {
        let form = &self.settings.contest;
        let spec = crate::compare::ContestSpec {
            base: self.settings.config.clone(),
            tasks: form.task_list(),
            budget: form.budget(),
        };
        if let Err(e) = spec.validate() {
            self.run.message(true, e.to_string());
            return;
        }
        let parent = self.settings.config.out.clone();
        if Path::new(self.inputs.runs_root.trim()) != parent {
            // The contest's runs are listed where it writes them.
            self.perform(Action::SetRunsRoot(parent.clone()));
        }
        self.spawn_contest(ContestStart::New {
            parent,
            spec: Box::new(spec),
        });
    }

    fn spawn_contest(&mut self, start: ContestStart) {
        if self.is_training() {
            self.run.message(
                true,
                "stop the current run first: a contest needs the CPU to itself",
            );
            return;
        }
        if self.tabs.runs.contest.is_running() {
            return;
        }
        let data = match &self.data {
            DataState::Ready(d) => Some(d.data.clone()),
            _ => None,
        };
        match ContestThread::spawn(start, data, self.engine.wake.clone()) {
            Ok(t) => {
                let c = &mut self.tabs.runs.contest;
                c.thread = Some(t);
                c.outcome = None;
                c.ranking = None;
                c.budget = None;
                c.status = "starting…".into();
            }
            Err(e) => self
                .run
                .message(true, format!("cannot start the contest's thread: {e}")),
        }
    }

    /// A message from the contest thread.
    pub(super) fn contest_message(&mut self, message: ContestMessage) {
        let budget = self.settings.contest.budget();
        match message {
            ContestMessage::Created(dir) => {
                self.tabs.runs.contest.dir = Some(dir);
                self.watch(WatchCommand::Rescan);
            }
            ContestMessage::Event(event) => {
                if let crate::compare::ContestEvent::Finished {
                    outcome: crate::compare::ContestOutcome::Failed(why),
                    ..
                } = &event
                {
                    self.run.message(true, format!("the contest failed: {why}"));
                }
                if let Some(run_dir) = self.tabs.runs.contest.apply(event, budget) {
                    if !self.tabs.runs.is_ticked(&run_dir) {
                        self.toggle_run(run_dir);
                    }
                    self.watch(WatchCommand::Rescan);
                }
            }
        }
    }

    /// Ticks or unticks a run in the runs view.
    fn toggle_run(&mut self, dir: PathBuf) {
        let runs = &mut self.tabs.runs;
        if runs.is_ticked(&dir) {
            runs.ticked.retain(|(d, _)| *d != dir);
            if self.following.as_ref() != Some(&dir) {
                self.watch(WatchCommand::Unfollow(dir));
            }
        } else {
            runs.ticked.push((dir.clone(), super::RunView::default()));
            // Followed from its first row again: every view of it starts over.
            self.watch(WatchCommand::Follow(dir));
        }
    }

    /// Shows a run directory in the Training tab, following it as it grows.
    pub fn follow_run(&mut self, dir: PathBuf) {
        if self.is_training() {
            self.run.message(true, "stop the current run first");
            return;
        }
        if !crate::runs::is_run(&dir) {
            self.run.message(
                true,
                format!(
                    "{} is not a run directory (it needs config.json and metrics.csv)",
                    dir.display()
                ),
            );
            return;
        }
        self.reset_view();
        self.inputs.run = dir.display().to_string();
        self.following = Some(dir.clone());
        self.run.status = RunStatus::Following { modified: None };
        self.tabs.tab = Tab::Training;
        self.watch(WatchCommand::Add(dir.clone()));
        self.watch(WatchCommand::Follow(dir));
    }

    /// Stops following the run in the Training tab (its curves stay).
    pub fn stop_following(&mut self) {
        let Some(dir) = self.following.take() else {
            return;
        };
        if !self.tabs.runs.is_ticked(&dir) {
            self.watch(WatchCommand::Unfollow(dir));
        }
        if matches!(self.run.status, RunStatus::Following { .. }) {
            self.run.status = RunStatus::Idle;
        }
    }

    /// What the thread reading run directories found.
    pub(super) fn watched(&mut self, ctx: &egui::Context, update: WatchUpdate) {
        match update {
            WatchUpdate::Listed(list) => self.tabs.runs.list = list,
            WatchUpdate::Events {
                dir,
                reset,
                events,
                modified,
            } => {
                if let Some(v) = self.tabs.runs.ticked_mut(&dir) {
                    if reset {
                        *v = super::RunView::default();
                    }
                    for e in &events {
                        v.apply(e);
                    }
                }
                if self.following.as_ref() == Some(&dir) {
                    if reset {
                        self.reset_view();
                    }
                    for e in &events {
                        self.run.apply(e);
                    }
                    self.run.status = RunStatus::Following { modified };
                }
            }
            WatchUpdate::Preview { dir, preview } => {
                if self.following.as_ref() == Some(&dir) {
                    self.tabs
                        .previews
                        .insert(preview.task, super::preview_view(ctx, &preview));
                    self.run.apply(&crate::train::Event::Preview(preview));
                }
            }
            WatchUpdate::Checkpoints { dir, checkpoints } => {
                if self.following.as_ref() == Some(&dir) {
                    self.run.checkpoints = Some(checkpoints);
                }
            }
            WatchUpdate::Problem { dir, message } => {
                if self.following.as_ref() == Some(&dir) || self.tabs.runs.is_ticked(&dir) {
                    self.run.message(true, message);
                }
            }
        }
    }

    /// Sends a command to the engine; a full queue or an ended worker becomes a message.
    /// Returns whether the command was queued.
    pub fn send(&mut self, cmd: Command) -> bool {
        let sent = self.engine.trainer.send(cmd);
        if !sent {
            self.run.message(
                true,
                "the training thread is not answering (its queue is full or it ended)",
            );
        }
        sent
    }

    /// Starts loading a data source (cancelling any load under way).
    pub fn open_data(&mut self, source: DataSource) {
        if let DataState::Loading(l) = &self.data {
            l.loader.cancel();
        }
        if let DataSource::Folder(p) = &source {
            self.inputs.path = p.display().to_string();
        }
        self.settings.config.data = source.clone();
        let cache = crate::data::cache::for_config(&self.settings.config);
        match Loader::start(
            source,
            self.settings.config.size,
            cache,
            super::THUMBNAILS_MAX,
            self.engine.wake.clone(),
        ) {
            Ok(l) => self.data = DataState::Loading(super::LoadingData::new(l)),
            Err(e) => self.data = DataState::Failed(format!("cannot start loading: {e}")),
        }
        self.tabs.inspection = None;
        self.tabs.augment.view = None;
        self.tabs.explorer = super::ExplorerTab::default();
    }

    /// Opens a folder of images.
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
        let wake = self.engine.wake.clone();
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
            Ok(_) => self.engine.dialog = Some(rx),
            Err(e) => self
                .run
                .message(true, format!("cannot open the folder dialog: {e}")),
        }
    }

    pub(super) fn poll_dialog(&mut self, _ctx: &egui::Context) {
        let Some(rx) = &self.engine.dialog else {
            return;
        };
        let Ok(choice) = rx.try_recv() else {
            return;
        };
        self.engine.dialog = None;
        match choice {
            Some(p) => self.open_folder(&p),
            None => self.run.message(
                false,
                "no folder chosen (without a desktop portal or zenity the system dialog cannot open: \
                 type a path and press Open, or drop a folder on the window)",
            ),
        }
    }

    /// Removes the image cache's files on a job thread; a message says what was freed.
    fn clear_image_cache(&mut self) {
        let Some(dir) = crate::data::cache::location(self.settings.config.cache_dir.as_deref())
        else {
            self.run.message(
                true,
                "no image cache folder: neither PRETEXT_CACHE_DIR nor a home folder is set",
            );
            return;
        };
        self.engine.jobs.spawn(move || {
            Done::Message(match crate::data::cache::clear(&dir) {
                Ok(removed) => (
                    false,
                    format!(
                        "image cache cleared: {}, {} freed ({})",
                        crate::text::count(removed.files, "file", "files"),
                        crate::report::bytes(removed.bytes),
                        dir.display()
                    ),
                ),
                Err(e) => (
                    true,
                    format!("cannot clear the image cache in {}: {e}", dir.display()),
                ),
            })
        });
    }

    /// While loading: the thumbnails of the images so far (remade at most every half second,
    /// from the copies the loader keeps: nothing is decoded here).
    fn loading_thumbnails(ctx: &egui::Context, l: &mut super::LoadingData) {
        if l.made
            .is_some_and(|(_, at)| at.elapsed() < super::LOADING_THUMBNAILS_EVERY)
        {
            return;
        }
        let seen = l.made.map_or(0, |(v, _)| v);
        let Some(g) = l.loader.glimpse().newer_than(seen) else {
            return;
        };
        let n = g.names.len();
        let (tex, _) = super::panels::atlas(
            ctx,
            "thumbnails-loading",
            g.size,
            (0..n).map(|i| g.image(i)),
        );
        l.thumbnails = tex;
        l.thumbnail_count = n;
        l.made = Some((g.version, std::time::Instant::now()));
    }

    pub(super) fn poll_loader(&mut self, ctx: &egui::Context) {
        let DataState::Loading(l) = &mut self.data else {
            return;
        };
        let Some(result) = l.loader.poll() else {
            Self::loading_thumbnails(ctx, l);
            return;
        };
        match result {
            Ok((d, secs)) => {
                let summary = d.summary(secs);
                let source = d.source.clone();
                for (n, what) in [
                    (summary.skipped.len(), "skipped"),
                    (summary.partial.len(), "only partly decoded"),
                ] {
                    if n > 0 {
                        let files = crate::text::count(n, "file", "files");
                        self.run
                            .message(false, format!("{files} {what} (see the data panel)"));
                    }
                }
                let thumb_indices = super::panels::thumbnail_indices(d.len());
                let (tex, cols) = super::panels::thumbnail_atlas(ctx, &d, &thumb_indices);
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
                self.run.message(true, e.to_string());
                self.data = DataState::Failed(e.to_string());
            }
        }
    }

    /// Starts training with the current settings.
    pub fn start(&mut self) {
        if self.is_training() {
            return;
        }
        if self.tabs.runs.contest.is_running() {
            self.run.message(
                true,
                "a contest is running: stop it first (it can be resumed)",
            );
            return;
        }
        self.stop_following();
        let config = self.settings.config.clone();
        if let Err(e) = config.validate() {
            self.run.message(true, e.to_string());
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
        self.run.status = RunStatus::Starting;
    }

    /// Continues a run directory (e.g. one the command line wrote): it is read back on a
    /// background thread into the run model, then the engine continues it.
    pub fn continue_run(&mut self, dir: &Path, epochs: Option<usize>) {
        if self.is_training() {
            self.run.message(true, "stop the current run first");
            return;
        }
        self.stop_following();
        self.reset_view();
        self.run.status = RunStatus::Starting;
        self.replays += 1;
        let replay = self.replays;
        self.pending_replay = Some(replay);
        let dir = dir.to_path_buf();
        let d = dir.clone();
        self.engine.jobs.spawn(move || Done::Replay {
            replay,
            dir: d.clone(),
            epochs,
            events: crate::train::run_dir::replay(&d).map_err(|e| e.to_string()),
        });
    }

    /// After a continued run: the person's own settings back in the left panel, unless they
    /// edited the run's meanwhile (the edit then stays).
    pub(super) fn restore_own_settings(&mut self) {
        if let Some((own, shown)) = self.own_settings.take()
            && self.settings.config == shown
            && own != shown
        {
            self.settings.config = own;
            self.run.message(
                false,
                "the left panel shows your own settings again (it showed the continued run's)",
            );
        }
    }

    fn reset_view(&mut self) {
        self.run.clear_run();
        self.tabs.previews.clear();
        self.tabs.inspection = None;
    }

    /// Stops any run and clears curves and previews; what the stopped run still sends is not
    /// shown (see `Engine::stale_runs`).
    pub fn reset(&mut self) {
        // A Continue still reading its run back has asked the worker for nothing: dropping the
        // read-back is all there is to stop (no Finished will come to wait for).
        let replaying = self.pending_replay.take().is_some();
        if !replaying && self.is_training() && self.send(Command::Stop) {
            self.engine.stale_runs += 1;
        }
        self.stop_following();
        self.reset_view();
        self.run.status = RunStatus::Idle;
        self.restore_own_settings();
    }

    /// Asks for every task's prediction on data-set image `index`.
    pub fn inspect(&mut self, index: usize) {
        if self.is_training() {
            self.send(Command::Inspect(vec![index]));
            self.tabs.tab = Tab::Inspect;
        } else {
            self.run.message(
                false,
                "start a run to see the tasks' predictions for an image",
            );
        }
    }

    fn export_embeddings(&mut self) {
        let (Some(e), DataState::Ready(d)) = (&self.tabs.explorer.embedding, &self.data) else {
            return;
        };
        let dir = self
            .run
            .run_dir
            .clone()
            .unwrap_or_default()
            .join("embeddings");
        let data = d.data.clone();
        let z = e.z.clone();
        self.engine.jobs.spawn(move || {
            Done::Message(match crate::eval::embed::export(&dir, &data, &z) {
                Ok((csv, npy)) => (
                    false,
                    format!(
                        "embeddings written: {} and {}",
                        csv.display(),
                        npy.display()
                    ),
                ),
                Err(err) => (
                    true,
                    format!("cannot write embeddings to {}: {err}", dir.display()),
                ),
            })
        });
    }

    /// t-SNE of the embedding's z on a job thread; the iterations done show as progress.
    fn tsne(&mut self) {
        let Some(e) = &self.tabs.explorer.embedding else {
            return;
        };
        let step = e.step;
        if self
            .tabs
            .explorer
            .tsne
            .as_ref()
            .is_some_and(|t| t.step() == step)
        {
            return;
        }
        let epochs_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.tabs.explorer.tsne = Some(super::TsneMap::Running {
            step,
            epochs_done: epochs_done.clone(),
        });
        let z = e.z.clone();
        self.engine.jobs.spawn(move || {
            let map = crate::eval::tsne::tsne(&z, |epoch, _| {
                epochs_done.store(epoch + 1, std::sync::atomic::Ordering::Relaxed);
            });
            Done::Tsne {
                step,
                result: map
                    .map(|points| {
                        // Quadratic in the images: measured up to a few thousand.
                        let trust = (z.len() <= 3000)
                            .then(|| crate::eval::tsne::trustworthiness(&z, &points, 5))
                            .flatten();
                        (points, trust)
                    })
                    .map_err(|e| e.to_string()),
            }
        });
    }

    fn augment_views(&mut self, key: u64) {
        let DataState::Ready(d) = &self.data else {
            return;
        };
        if self.tabs.augment.pending == Some(key) {
            return;
        }
        self.tabs.augment.pending = Some(key);
        let data = d.data.clone();
        let augment = self.settings.config.settings.augment.clone();
        let seed = self.tabs.augment.seed;
        self.engine.jobs.spawn(move || Done::Augment {
            key,
            canvas: super::panels::augment::views(&data, &augment, seed),
        });
    }

    /// A background job has finished.
    pub(super) fn job_done(&mut self, ctx: &egui::Context, done: Done) {
        match done {
            Done::Replay {
                replay,
                dir,
                epochs,
                events,
            } => match events {
                // A Reset (or another Continue) came while it was read back.
                _ if self.pending_replay != Some(replay) => {}
                Ok(events) => {
                    for e in &events {
                        self.run.apply(e);
                    }
                    if let Some(config) = &self.run.config {
                        let epochs = epochs.unwrap_or(config.epochs);
                        let shown = crate::config::TrainConfig {
                            epochs,
                            ..config.clone()
                        };
                        let own = match self.own_settings.take() {
                            Some((own, _)) => own,
                            None => self.settings.config.clone(),
                        };
                        self.settings.config = shown.clone();
                        self.own_settings = Some((own, shown));
                    }
                    self.pending_replay = None;
                    self.send(Command::Continue {
                        run_dir: dir,
                        epochs,
                        lr: None,
                        minutes: None,
                    });
                    self.run.status = RunStatus::Starting;
                }
                Err(e) => {
                    self.pending_replay = None;
                    self.run.message(true, e);
                    self.run.status = RunStatus::Idle;
                }
            },
            Done::Message((error, text)) => self.run.message(error, text),
            Done::Tsne { step, result } => {
                // A t-SNE of an older embedding is dropped.
                if self
                    .tabs
                    .explorer
                    .tsne
                    .as_ref()
                    .is_some_and(|t| t.step() == step)
                {
                    self.tabs.explorer.tsne = Some(match result {
                        Ok((points, trust)) => super::TsneMap::Ready {
                            step,
                            points,
                            trust,
                        },
                        Err(why) => super::TsneMap::Failed { step, why },
                    });
                }
            }
            Done::Augment { key, canvas } => {
                if self.tabs.augment.pending == Some(key) {
                    self.tabs.augment.pending = None;
                }
                let view = PreviewView {
                    pixels: None,
                    caption: "original | six views T(x)".into(),
                    texture: super::texture(ctx, "augment", &canvas),
                    size: [canvas.width, canvas.height],
                };
                self.tabs.augment.view = Some((key, view));
            }
        }
    }
}
