//! Child processes for tests that need a second process: this test binary run again, executing
//! one of its ignored tests, and killed and reaped however the test that started it ends.

use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};

/// A child process that is killed (SIGKILL on unix) and reaped when the guard is dropped,
/// however the test ends, so that no process outlives it.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn kill_and_wait(&mut self) {
        // An error means it already exited; `wait` reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// Starts this test binary again, running only the ignored test `test` (on one thread, output
/// not captured), with `envs` set, the given stdin, stdout piped to this process and stderr
/// shared with it.
pub fn spawn_ignored_test(test: &str, envs: &[(&str, &OsStr)], stdin: Stdio) -> ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildGuard(child)
}
