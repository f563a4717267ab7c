//! Issue 22: the recording's disk fills mid-incident (a 256 KiB tmpfs under a
//! 1,500-connection churn). conntrace keeps tracing and diagnosing: the log is cut
//! back to its last whole record, the refused connects made after the disk filled
//! are found and printed at exit, and the exit status and message say how many
//! records the log could not take.

use std::{
    net::{TcpListener, TcpStream},
    process::Command,
};

use tests::{unique, Recorder};
use tracer::eventlog::Log;

/// A tmpfs of `size`, unmounted and removed on drop (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("ctfull"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs on {}", dir.display());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_keeps_the_diagnosis_and_ends_the_log_on_a_whole_record() {
    let disk = Tmpfs::new("256k");
    let path = disk.0.join("conntrace.jsonl");
    let rec = Recorder::start_at(&path, &[], &[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..1500 {
                drop(listener.accept().expect("accept"));
            }
        });
        for _ in 0..1500 {
            drop(TcpStream::connect(addr).expect("connect"));
        }
    });
    // The disk is full by now (about 500 bytes a connection); traffic after it must
    // still be diagnosed.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nothing = closed.local_addr().expect("addr");
    drop(closed);
    for _ in 0..3 {
        assert!(TcpStream::connect(nothing).is_err(), "nothing listens");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stdout_path = rec.stdout.clone();
    let (status, stderr) = rec.stop_raw();
    let said = format!(
        "{}\n{}",
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr.join("\n")
    );
    assert!(
        !status.success(),
        "the exit status says the log is incomplete: {said}"
    );
    assert!(
        said.contains("is incomplete:")
            && said.contains("could not be written (No space left on device"),
        "{said}"
    );
    assert!(
        said.contains(&format!("connection-refused    {nothing}")),
        "the refused connects after the disk filled are found: {said}"
    );
    let bytes = std::fs::read(&path).expect("the log");
    assert_eq!(bytes.last(), Some(&b'\n'), "the log ends on a whole record");
    let log = Log::read(&path).expect("read");
    assert!(log.errors.is_empty(), "every line whole: {:?}", log.errors);
    assert!(log.records.len() > 100, "the log kept what fit");
}
