//! A/B slots under a root directory: `slots/a`, `slots/b`, and `state.json` saying which is
//! active, which is on trial and which was active before. A bundle is written into the
//! inactive slot through a temporary directory (files fsynced, then renamed into place,
//! then the directory fsynced), so a power cut leaves the inactive slot either complete or
//! absent, and the active slot is never written at all. `state.json` is replaced the same
//! way (temp, fsync, rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bundle::{Bundle, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("state.json: {0}")]
    State(String),
    #[error("security version {bundle} is below the HSM's minimum {min}")]
    Rollback { bundle: u64, min: u64 },
    #[error("no slot is on trial")]
    NoTrial,
    #[error("no previous slot to roll back to")]
    NoPrevious,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub security_version: u64,
    pub installed_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub active: Option<Slot>,
    pub trial: Option<Slot>,
    pub previous: Option<Slot>,
    #[serde(default)]
    pub a: Option<Installed>,
    #[serde(default)]
    pub b: Option<Installed>,
}

impl State {
    pub fn slot(&self, s: Slot) -> Option<&Installed> {
        match s {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }
    fn set(&mut self, s: Slot, v: Option<Installed>) {
        match s {
            Slot::A => self.a = v,
            Slot::B => self.b = v,
        }
    }
}

pub struct Root {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |e| SlotError::Io(path.to_path_buf(), e)
}

fn fsync_dir(dir: &Path) -> Result<(), SlotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl Root {
    pub fn new(dir: &Path) -> Root {
        Root {
            dir: dir.to_path_buf(),
        }
    }

    pub fn slot_dir(&self, s: Slot) -> PathBuf {
        self.dir.join("slots").join(s.name())
    }

    pub fn load(&self) -> Result<State, SlotError> {
        let path = self.dir.join("state.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| SlotError::State(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(SlotError::Io(path, e)),
        }
    }

    fn save(&self, state: &State) -> Result<(), SlotError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        fsync_dir(&self.dir)
    }

    /// Writes a verified bundle into the inactive slot and marks it for a trial. `min` is
    /// the HSM's minimum security version.
    pub fn install(
        &self,
        bundle: &Bundle,
        manifest: &Manifest,
        min: u64,
    ) -> Result<Slot, SlotError> {
        if manifest.security_version < min {
            return Err(SlotError::Rollback {
                bundle: manifest.security_version,
                min,
            });
        }
        let mut state = self.load()?;
        let target = state.active.map_or(Slot::A, Slot::other);
        let slots = self.dir.join("slots");
        std::fs::create_dir_all(&slots).map_err(io(&slots))?;
        // What a cut-off install left behind is discarded.
        let tmp = slots.join(format!(".incoming-{}", target.name()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        for (name, data) in bundle.payloads() {
            let path = tmp.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&path).map_err(io(&path))?;
                f.write_all(data).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            if name == "bsn-gateway" {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&path))?;
            }
        }
        for dir in walk_dirs(&tmp) {
            fsync_dir(&dir)?;
        }
        // The old content of the inactive slot goes first: if power is cut between the two
        // steps the slot is absent, never half of one and half of another.
        let dest = self.slot_dir(target);
        state.set(target, None);
        if state.trial == Some(target) {
            state.trial = None;
        }
        self.save(&state)?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        fsync_dir(&slots)?;
        state.set(
            target,
            Some(Installed {
                version: manifest.version.clone(),
                security_version: manifest.security_version,
                installed_at: crate::util::now_rfc3339(),
            }),
        );
        state.trial = Some(target);
        self.save(&state)?;
        Ok(target)
    }

    /// The trial slot becomes active; returns it with its security version, for the
    /// caller to raise the HSM's minimum to.
    pub fn commit(&self) -> Result<(Slot, u64), SlotError> {
        let mut state = self.load()?;
        let trial = state.trial.ok_or(SlotError::NoTrial)?;
        let sv = state
            .slot(trial)
            .map(|i| i.security_version)
            .ok_or_else(|| SlotError::State("the trial slot is empty".into()))?;
        state.previous = state.active;
        state.active = Some(trial);
        state.trial = None;
        self.save(&state)?;
        Ok((trial, sv))
    }

    /// Ends a trial (the active slot stays), or with no trial, goes back to the previous
    /// slot.
    pub fn rollback(&self) -> Result<Option<Slot>, SlotError> {
        let mut state = self.load()?;
        if state.trial.take().is_some() {
            self.save(&state)?;
            return Ok(state.active);
        }
        let previous = state.previous.ok_or(SlotError::NoPrevious)?;
        if state.slot(previous).is_none() {
            return Err(SlotError::NoPrevious);
        }
        state.previous = state.active;
        state.active = Some(previous);
        self.save(&state)?;
        Ok(Some(previous))
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}
