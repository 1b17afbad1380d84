//! A small file system for a test to fill: a tmpfs mounted in a temporary folder, unmounted
//! when dropped. Ferry's tests run as root; without the right to mount, a test that needs one
//! fails and says so. The store's unit tests use this file too (`store::tmpfs`).

use std::path::{Path, PathBuf};

pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it: `2m`, `64m`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes the file `name` until the file system has no byte left.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut filler = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while filler.write(&chunk).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .status();
    }
}
