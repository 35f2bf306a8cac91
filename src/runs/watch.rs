//! `pretext-runs`: the thread that reads run directories for the window, so the UI thread never
//! touches a file. It lists the runs under a folder (every [`SCAN_EVERY`]) with their
//! summaries, and follows the runs it is asked to: the new rows of metrics.csv as events (the
//! same [`Event`]s a live run sends, so a [`crate::view::RunView`] takes them alike), new preview
//! pictures and the checkpoints kept — also while another process is still writing them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use super::{MetricsTail, RunSummary, SummaryFold};
use crate::config::TaskKind;
use crate::tasks::Preview;
use crate::train::run_dir::{self, Checkpoints, RowEvents};
use crate::train::{Event, Notify};

/// How often followed runs are read.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How often the runs folder is listed again.
pub const SCAN_EVERY: Duration = Duration::from_secs(2);

/// What the window asks of the thread.
#[derive(Clone, Debug)]
pub enum WatchCommand {
    /// List the runs under this folder (the runs folder).
    Root(PathBuf),
    /// Also list this run directory (opened from elsewhere).
    Add(PathBuf),
    /// Follow a run: its events from the first row on, then as they are written.
    Follow(PathBuf),
    Unfollow(PathBuf),
    /// List again now.
    Rescan,
}

/// What the thread reports.
#[derive(Clone, Debug)]
pub enum WatchUpdate {
    /// The runs found, with their summaries (sent when anything changed).
    Listed(Vec<RunSummary>),
    /// A followed run's new events. `reset`: forget what came before (the first batch of a
    /// follow, which starts with `RunStarted`, or a rewritten metrics.csv).
    Events {
        dir: PathBuf,
        reset: bool,
        events: Vec<Event>,
        /// When metrics.csv was last written (how live the run is).
        modified: Option<SystemTime>,
    },
    /// A newer preview picture of a followed run.
    Preview { dir: PathBuf, preview: Box<Preview> },
    /// A followed run's checkpoints changed.
    Checkpoints {
        dir: PathBuf,
        checkpoints: Checkpoints,
    },
    /// A run cannot be followed (not a run directory, unreadable).
    Problem { dir: PathBuf, message: String },
}

/// A handle on the thread; dropping it ends the thread at its next tick.
pub struct Watcher {
    commands: Sender<WatchCommand>,
    updates: Receiver<WatchUpdate>,
}

impl Watcher {
    /// Starts `pretext-runs`; `notify` is called after each update it sends.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(notify: Notify) -> std::io::Result<Self> {
        let (commands, command_rx) = bounded(256);
        let (update_tx, updates) = unbounded();
        std::thread::Builder::new()
            .name("pretext-runs".into())
            .spawn(move || {
                State::default().run(&command_rx, &update_tx, &notify);
            })?;
        Ok(Self { commands, updates })
    }

    /// Sends a command; false when the thread has ended or is not keeping up.
    pub fn send(&self, command: WatchCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }

    /// Where the thread's updates arrive (never blocks the thread: unbounded).
    pub fn updates(&self) -> &Receiver<WatchUpdate> {
        &self.updates
    }
}

/// A run being followed.
struct Followed {
    tail: MetricsTail,
    rows: RowEvents,
    started: bool,
    previews: BTreeMap<TaskKind, usize>,
    checkpoints: Option<Checkpoints>,
    /// The previews/ and checkpoints/ folders' modification times when last read in full:
    /// an unchanged folder is not read again.
    previews_read: Option<SystemTime>,
    checkpoints_read: Option<SystemTime>,
}

/// Whether a folder must be read again: it changed since `read`, or changed so recently that
/// a coarse clock could hide a later change within the same tick.
fn changed(folder: &Path, read: Option<SystemTime>) -> (bool, Option<SystemTime>) {
    let now = modified(folder);
    let recent = now
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|d| d < Duration::from_secs(2));
    (now != read || recent, now)
}

/// A run being listed.
struct Listed {
    tail: MetricsTail,
    fold: SummaryFold,
    eval_modified: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    root: Option<PathBuf>,
    added: Vec<PathBuf>,
    listed: HashMap<PathBuf, Listed>,
    followed: HashMap<PathBuf, Followed>,
    sent: Vec<RunSummary>,
}

impl State {
    fn run(
        mut self,
        commands: &Receiver<WatchCommand>,
        updates: &Sender<WatchUpdate>,
        notify: &Notify,
    ) {
        let mut last_scan: Option<Instant> = None;
        loop {
            let mut out = Vec::new();
            match commands.recv_timeout(FOLLOW_EVERY) {
                Ok(c) => {
                    if self.command(c, &mut out) {
                        last_scan = None;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            for c in commands.try_iter() {
                if self.command(c, &mut out) {
                    last_scan = None;
                }
            }
            self.follow(&mut out);
            if last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
                last_scan = Some(Instant::now());
                self.scan(&mut out);
            }
            for u in out {
                if updates.send(u).is_err() {
                    return;
                }
                notify();
            }
        }
    }

    /// Takes a command; returns whether the listing should be made again now.
    fn command(&mut self, c: WatchCommand, out: &mut Vec<WatchUpdate>) -> bool {
        match c {
            WatchCommand::Root(p) => {
                self.root = Some(p);
                // The front end empties its table when it asks for a folder (again): the next
                // listing goes out even if nothing changed since the last.
                self.sent.clear();
                true
            }
            WatchCommand::Add(p) => {
                if !self.added.contains(&p) {
                    self.added.push(p);
                }
                true
            }
            WatchCommand::Follow(dir) => {
                match run_dir::read_config(&dir) {
                    Ok(config) => {
                        self.followed.insert(
                            dir.clone(),
                            Followed {
                                tail: MetricsTail::new(&dir),
                                rows: RowEvents::new(config.epochs, 0),
                                started: false,
                                previews: BTreeMap::new(),
                                checkpoints: None,
                                previews_read: None,
                                checkpoints_read: None,
                            },
                        );
                    }
                    Err(e) => out.push(WatchUpdate::Problem {
                        dir,
                        message: e.to_string(),
                    }),
                }
                false
            }
            WatchCommand::Unfollow(dir) => {
                self.followed.remove(&dir);
                false
            }
            WatchCommand::Rescan => true,
        }
    }

    /// Reads every followed run's new rows, previews and checkpoints.
    fn follow(&mut self, out: &mut Vec<WatchUpdate>) {
        for (dir, f) in &mut self.followed {
            let tailed = match f.tail.poll() {
                Ok(t) => t,
                Err(message) => {
                    out.push(WatchUpdate::Problem {
                        dir: dir.clone(),
                        message,
                    });
                    continue;
                }
            };
            let reset = tailed.reset || !f.started;
            let mut events = Vec::new();
            if reset {
                let Ok(config) = run_dir::read_config(dir) else {
                    continue;
                };
                let per_epoch = run_dir::batches_per_epoch(&tailed.rows);
                f.rows = RowEvents::new(config.epochs, per_epoch);
                // Whoever starts over needs the pictures and checkpoints again too.
                f.previews.clear();
                f.checkpoints = None;
                (f.previews_read, f.checkpoints_read) = (None, None);
                events.push(run_dir::started_event(dir, &config, per_epoch));
                f.started = true;
            }
            let quiet = tailed.rows.is_empty();
            events.extend(f.rows.push(tailed.rows));
            if quiet {
                // Nothing new for a tick: the last step's rows are all there.
                events.extend(f.rows.finish());
            }
            if !events.is_empty() || reset {
                out.push(WatchUpdate::Events {
                    dir: dir.clone(),
                    reset,
                    events,
                    modified: modified(&dir.join(run_dir::METRICS_FILE)),
                });
            }
            let (read, previews_now) = changed(&dir.join(run_dir::PREVIEW_DIR), f.previews_read);
            if read {
                let mut all = true;
                for (task, (epoch, path)) in super::newest_previews(dir) {
                    if f.previews.get(&task).is_some_and(|&e| e >= epoch) {
                        continue;
                    }
                    // A picture still being written fails to decode: tried again next tick.
                    match super::read_preview(task, epoch, &path) {
                        Ok(p) => {
                            f.previews.insert(task, epoch);
                            out.push(WatchUpdate::Preview {
                                dir: dir.clone(),
                                preview: Box::new(p),
                            });
                        }
                        Err(_) => all = false,
                    }
                }
                if all {
                    f.previews_read = previews_now;
                }
            }
            let (read, checkpoints_now) =
                changed(&dir.join(run_dir::CHECKPOINT_DIR), f.checkpoints_read);
            if read {
                f.checkpoints_read = checkpoints_now;
                let c = run_dir::list_checkpoints(dir);
                if f.checkpoints.as_ref() != Some(&c) {
                    f.checkpoints = Some(c.clone());
                    out.push(WatchUpdate::Checkpoints {
                        dir: dir.clone(),
                        checkpoints: c,
                    });
                }
            }
        }
    }

    /// Lists the runs and brings their summaries up to date.
    fn scan(&mut self, out: &mut Vec<WatchUpdate>) {
        let mut dirs: Vec<PathBuf> = self
            .root
            .as_deref()
            .map(super::find_runs)
            .unwrap_or_default();
        for a in &self.added {
            if super::is_run(a) && !dirs.contains(a) {
                dirs.push(a.clone());
            }
        }
        self.listed.retain(|d, _| dirs.contains(d));
        let mut summaries = Vec::with_capacity(dirs.len());
        for dir in dirs {
            if !self.listed.contains_key(&dir) {
                let Ok(config) = run_dir::read_config(&dir) else {
                    continue;
                };
                self.listed.insert(
                    dir.clone(),
                    Listed {
                        tail: MetricsTail::new(&dir),
                        fold: SummaryFold::new(&dir, &config),
                        eval_modified: None,
                    },
                );
            }
            let Some(l) = self.listed.get_mut(&dir) else {
                continue;
            };
            if let Ok(t) = l.tail.poll() {
                if t.reset {
                    l.fold.reset();
                }
                l.fold.push(&t.rows);
            }
            l.fold
                .set_modified(modified(&dir.join(run_dir::METRICS_FILE)));
            l.fold.set_writing(run_dir::being_written(&dir));
            let eval_path = dir.join(super::EVAL_FILE);
            let eval_modified = modified(&eval_path);
            if eval_modified.is_some() && eval_modified != l.eval_modified {
                l.eval_modified = eval_modified;
                if let Some(json) = std::fs::read(&eval_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                {
                    l.fold.set_eval(&json);
                }
            }
            summaries.push(l.fold.summary().clone());
        }
        if summaries != self.sent {
            self.sent = summaries.clone();
            out.push(WatchUpdate::Listed(summaries));
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A notify that does nothing, for tests and front ends that poll instead of being woken.
pub fn no_notify() -> Notify {
    Arc::new(|| {})
}
