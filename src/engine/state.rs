//! The engine's state machine: which command is allowed in which state. Pure.

use crate::api::State;

/// A user command that changes the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start { reset: bool },
    Pause,
    Resume { from_failure: bool },
    Finalize,
}

/// How far the copy is: what the decision depends on besides the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every selected collection has been copied.
    pub clone_completed: bool,
    /// Percent of the estimated bytes copied (for the refusal message).
    pub copy_percent: u8,
}

/// Why a command is refused; answered with HTTP 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The state a command leads to, or why it is refused.
pub fn next_state(state: State, cmd: Command, progress: Progress) -> Result<State, Refusal> {
    use Command::*;
    use State::*;
    let refuse = |m: String| Err(Refusal(m));
    match (cmd, state) {
        (Start { .. }, Idle) => Ok(Running),
        (Start { reset: true }, Finalized | Failed | Paused) => Ok(Running),
        (Start { reset: false }, Finalized) => refuse(
            "the migration is finalized, which is terminal; to run a new migration start again \
             with reset (`mongoferry start --reset` or {\"reset\": true}), which forgets the \
             previous run and copies everything anew"
                .into(),
        ),
        (Start { reset: false }, Failed) => refuse(
            "the migration failed; fix the cause and resume it with `mongoferry resume \
             --from-failure` ({\"fromFailure\": true}), or start over with reset"
                .into(),
        ),
        (Start { .. }, s @ (Running | Paused | Finalizing)) => refuse(format!(
            "a migration is already {s}; pause it and start with reset to start over"
        )),
        (Pause, Running) => Ok(Paused),
        (Pause, Paused) => refuse("the migration is already paused".into()),
        (Pause, s) => refuse(format!("cannot pause: the migration is {s}, not running")),
        (Resume { .. }, Paused) => Ok(Running),
        (Resume { from_failure: true }, Failed) => Ok(Running),
        (Resume { from_failure: false }, Failed) => refuse(
            "the migration failed; resume it with fromFailure=true (`mongoferry resume \
             --from-failure`) once the cause is fixed"
                .into(),
        ),
        (Resume { .. }, Running) => refuse("the migration is already running".into()),
        (Resume { .. }, s) => refuse(format!("cannot resume: the migration is {s}, not paused")),
        (Finalize, Running | Paused) if progress.clone_completed => Ok(Finalizing),
        (Finalize, Running | Paused) => refuse(format!(
            "cannot finalize yet: the initial copy is not complete ({}% copied); wait until \
             status shows initialSync.cloneCompleted",
            progress.copy_percent
        )),
        (Finalize, Finalizing) => refuse("the migration is already finalizing".into()),
        (Finalize, Finalized) => refuse("the migration is already finalized".into()),
        (Finalize, s) => refuse(format!(
            "cannot finalize: the migration is {s}; only a running or paused migration can be finalized"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::*;
    use State::*;

    const DONE: Progress = Progress {
        clone_completed: true,
        copy_percent: 100,
    };
    const COPYING: Progress = Progress {
        clone_completed: false,
        copy_percent: 42,
    };

    #[test]
    fn allowed_transitions() {
        assert_eq!(
            next_state(Idle, Start { reset: false }, COPYING),
            Ok(Running)
        );
        assert_eq!(next_state(Running, Pause, COPYING), Ok(Paused));
        assert_eq!(
            next_state(
                Paused,
                Resume {
                    from_failure: false
                },
                COPYING
            ),
            Ok(Running)
        );
        assert_eq!(
            next_state(Failed, Resume { from_failure: true }, COPYING),
            Ok(Running)
        );
        assert_eq!(next_state(Running, Finalize, DONE), Ok(Finalizing));
        assert_eq!(next_state(Paused, Finalize, DONE), Ok(Finalizing));
        assert_eq!(
            next_state(Finalized, Start { reset: true }, DONE),
            Ok(Running)
        );
        assert_eq!(next_state(Failed, Start { reset: true }, DONE), Ok(Running));
    }

    #[test]
    fn finalize_needs_the_copy() {
        let e = next_state(Running, Finalize, COPYING).unwrap_err();
        assert!(e.0.contains("42%"), "{e}");
    }

    #[test]
    fn finalized_is_terminal_without_reset() {
        for cmd in [
            Start { reset: false },
            Pause,
            Resume { from_failure: true },
            Finalize,
        ] {
            let r = next_state(Finalized, cmd, DONE);
            assert!(r.is_err(), "{cmd:?}");
        }
        let e = next_state(Finalized, Start { reset: false }, DONE).unwrap_err();
        assert!(e.0.contains("reset"), "{e}");
    }

    /// Every (state, command) pair is decided, and every refusal says something.
    #[test]
    fn exhaustive_pairs_have_messages() {
        let cmds = [
            Start { reset: false },
            Start { reset: true },
            Pause,
            Resume {
                from_failure: false,
            },
            Resume { from_failure: true },
            Finalize,
        ];
        let mut allowed = 0;
        for s in State::ALL {
            for c in cmds {
                for f in [DONE, COPYING] {
                    match next_state(s, c, f) {
                        Ok(_) => allowed += 1,
                        Err(r) => assert!(r.0.len() > 20, "{s:?} {c:?}: {}", r.0),
                    }
                }
            }
        }
        assert_eq!(allowed, 20);
    }
}
