//! Enforce, shadow or off: how an admission layer acts on its decisions (contract 6).
//!
//! A new limit or deadline can be watched in production before it bites: in
//! [`Mode::Shadow`] a layer decides as usual, reports what it *would* have done through its
//! observer, and lets the request through. A [`ModeHandle`] changes the mode at runtime for
//! every service the layer built; the change is seen by every request that starts after
//! [`ModeHandle::set`] returns.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// What an admission layer does with its decisions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide and act: reject, time out.
    #[default]
    Enforce,
    /// Decide and report ("would have rejected"), but let every request through.
    Shadow,
    /// Do nothing at all: the layer is a pass-through.
    Off,
}

impl Mode {
    /// `"enforce"`, `"shadow"` or `"off"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }

    const fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Shadow,
            2 => Mode::Off,
            _ => Mode::Enforce,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared, runtime-switchable [`Mode`]. Clones control the same mode.
///
/// ```
/// use tower_parapet::{Mode, ModeHandle};
///
/// let mode = ModeHandle::new(Mode::Shadow);
/// let for_admin = mode.clone();
/// for_admin.set(Mode::Enforce);
/// assert_eq!(mode.get(), Mode::Enforce);
/// ```
#[derive(Clone)]
pub struct ModeHandle(Arc<AtomicU8>);

impl ModeHandle {
    /// A handle starting in `mode`.
    pub fn new(mode: Mode) -> ModeHandle {
        ModeHandle(Arc::new(AtomicU8::new(mode as u8)))
    }

    /// The current mode: one atomic load.
    #[inline]
    pub fn get(&self) -> Mode {
        Mode::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Switch the mode; returns the previous one.
    pub fn set(&self, mode: Mode) -> Mode {
        Mode::from_u8(self.0.swap(mode as u8, Ordering::AcqRel))
    }
}

impl Default for ModeHandle {
    fn default() -> Self {
        ModeHandle::new(Mode::Enforce)
    }
}

impl From<Mode> for ModeHandle {
    fn from(mode: Mode) -> Self {
        ModeHandle::new(mode)
    }
}

impl fmt::Debug for ModeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ModeHandle").field(&self.get()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_returns_previous_and_is_shared() {
        let h = ModeHandle::default();
        let c = h.clone();
        assert_eq!(c.set(Mode::Off), Mode::Enforce);
        assert_eq!(h.get(), Mode::Off);
        assert_eq!(h.set(Mode::Shadow), Mode::Off);
        assert_eq!(format!("{h:?}"), "ModeHandle(Shadow)");
    }

    #[test]
    fn mode_deserializes_from_snake_case() {
        let m: Mode = serde_json::from_str("\"shadow\"").unwrap();
        assert_eq!(m, Mode::Shadow);
    }
}
