//! The [`Tailer`] on real files in tempdirs: partial lines, rotation, truncation, a missing
//! file, restarts, and lines it cannot use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{numbered, render, Vars, OK};
use crate::tailer::{PollStats, Position, Start, Tailer, MAX_LINE};

/// The numbers of the [`numbered`] lines one poll read, and its stats.
fn poll(tailer: &mut Tailer) -> (Vec<u32>, PollStats) {
    let mut seen = Vec::new();
    let stats = tailer
        .poll(&mut |r| seen.push(r.time as u32 - 1000))
        .unwrap();
    (seen, stats)
}

const NONE: [u32; 0] = [];

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn lines(range: std::ops::RangeInclusive<u32>) -> String {
    range.map(numbered).collect()
}

#[test]
fn a_partial_line_waits_for_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    File::create(&log).unwrap();
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    let line = numbered(1);
    let (first, second) = line.split_at(line.len() / 2);
    append(&log, first);
    assert_eq!(poll(&mut tailer), (NONE.to_vec(), PollStats::default()));
    append(&log, second);
    let (seen, stats) = poll(&mut tailer);
    assert_eq!((seen, stats.lines, stats.records), (vec![1], 1, 1));
}

#[test]
fn rotation_by_rename_finishes_the_old_file_then_reads_the_new_from_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    append(&log, &lines(1..=2));
    let mut tailer = Tailer::open(
        &log,
        Start::Offset {
            inode: 0,
            offset: 0,
        },
    )
    .unwrap();
    assert_eq!(poll(&mut tailer).0, [1, 2]);
    // Written just before the rotation and not yet read.
    append(&log, &lines(3..=3));
    fs::rename(&log, &rotated).unwrap();
    append(&log, &lines(4..=5));
    assert_eq!(poll(&mut tailer).0, [3, 4, 5]);
    // A worker that has not reopened its log yet still writes to the old file.
    append(&rotated, &lines(6..=6));
    append(&log, &lines(7..=7));
    assert_eq!(poll(&mut tailer).0, [6, 7]);
    assert_eq!(poll(&mut tailer).0, NONE);
}

#[test]
fn a_renamed_file_is_still_read_until_a_new_one_appears() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=1));
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    append(&dir.path().join("access.log.1"), &lines(2..=2));
    assert_eq!(poll(&mut tailer).0, [2]);
    append(&log, &lines(3..=3));
    assert_eq!(poll(&mut tailer).0, [3]);
}

#[test]
fn truncation_in_place_restarts_at_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=3));
    let mut tailer = Tailer::open(
        &log,
        Start::Offset {
            inode: 0,
            offset: 0,
        },
    )
    .unwrap();
    assert_eq!(poll(&mut tailer).0, [1, 2, 3]);
    // copytruncate: the file keeps its inode and shrinks; nginx appends from 0.
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &lines(4..=4));
    assert_eq!(poll(&mut tailer).0, [4]);
    append(&log, &lines(5..=5));
    assert_eq!(poll(&mut tailer).0, [5]);
}

#[test]
fn a_missing_file_is_read_from_0_once_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    assert_eq!(poll(&mut tailer), (NONE.to_vec(), PollStats::default()));
    assert_eq!(tailer.position(), None);
    append(&log, &lines(1..=2));
    assert_eq!(poll(&mut tailer).0, [1, 2]);
}

#[test]
fn start_end_skips_history() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=3));
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    assert_eq!(poll(&mut tailer).0, NONE);
    append(&log, &lines(4..=4));
    assert_eq!(poll(&mut tailer).0, [4]);
}

#[test]
fn start_end_inside_a_line_skips_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let line = numbered(1);
    append(&log, &line[..10]);
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    append(&log, &line[10..]);
    append(&log, &lines(2..=2));
    let (seen, stats) = poll(&mut tailer);
    assert_eq!((seen, stats.malformed), (vec![2], 0));
}

#[test]
fn a_restart_from_a_saved_position_reads_exactly_the_lines_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=3));
    let mut tailer = Tailer::open(
        &log,
        Start::Offset {
            inode: 0,
            offset: 0,
        },
    )
    .unwrap();
    assert_eq!(poll(&mut tailer).0, [1, 2, 3]);
    let saved = tailer.position().unwrap();
    drop(tailer);
    let half = numbered(6);
    append(&log, &(lines(4..=5) + &half[..20]));
    let mut tailer = Tailer::open(&log, saved.into()).unwrap();
    assert_eq!(poll(&mut tailer).0, [4, 5]);
    // The partial line is not part of the position: a restart reads it whole.
    let saved = tailer.position().unwrap();
    assert_eq!(saved.offset, fs::metadata(&log).unwrap().len() - 20);
    drop(tailer);
    append(&log, &half[20..]);
    let mut tailer = Tailer::open(&log, Start::from(saved)).unwrap();
    assert_eq!(poll(&mut tailer).0, [6]);
    assert_eq!(poll(&mut tailer).0, NONE);
}

#[test]
fn a_restart_after_a_rotation_finishes_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=2));
    let mut tailer = Tailer::open(
        &log,
        Start::Offset {
            inode: 0,
            offset: 0,
        },
    )
    .unwrap();
    assert_eq!(poll(&mut tailer).0, [1, 2]);
    let saved = tailer.position().unwrap();
    drop(tailer);
    append(&log, &lines(3..=4));
    fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    append(&log, &lines(5..=5));
    let mut tailer = Tailer::open(&log, saved.into()).unwrap();
    assert_eq!(poll(&mut tailer).0, [3, 4, 5]);
}

#[test]
fn a_saved_offset_past_the_end_means_truncated_while_down() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &lines(1..=1));
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&log).unwrap());
    let saved = Position {
        inode,
        offset: 1 << 20,
    };
    let mut tailer = Tailer::open(&log, saved.into()).unwrap();
    assert_eq!(poll(&mut tailer).0, [1]);
}

#[test]
fn unusable_lines_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let theirs = render(Vars {
        proxy_host: "backend",
        ..OK
    });
    let text = format!("{theirs}\nnot json\n{}{{\"msec\":1}}\n", numbered(1));
    let mut bytes = text.into_bytes();
    // Not UTF-8.
    bytes.extend_from_slice(b"\xff\xfe\n");
    fs::write(&log, bytes).unwrap();
    let mut tailer = Tailer::open(
        &log,
        Start::Offset {
            inode: 0,
            offset: 0,
        },
    )
    .unwrap();
    let (seen, stats) = poll(&mut tailer);
    assert_eq!(seen, [1]);
    assert_eq!(
        (stats.lines, stats.records, stats.skipped, stats.malformed),
        (5, 1, 1, 3)
    );
    let first = stats.first_malformed.unwrap();
    assert!(first.contains("access.log at byte"), "{first}");
}

#[test]
fn an_overlong_line_is_dropped_up_to_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    File::create(&log).unwrap();
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    append(&log, &"x".repeat(MAX_LINE + 1));
    let (seen, stats) = poll(&mut tailer);
    assert_eq!((seen, stats.malformed), (NONE.to_vec(), 1));
    append(&log, &("y".repeat(100) + "\n" + &numbered(1)));
    let (seen, stats) = poll(&mut tailer);
    assert_eq!((seen, stats.malformed, stats.lines), (vec![1], 0, 1));
}

#[tokio::test]
async fn run_polls_on_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let tailer = Tailer::open(&log, Start::End).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let seen = seen.clone();
        move |r: crate::tailer::ProxyRecord| seen.lock().unwrap().push(r.time as u32 - 1000)
    };
    let task = tokio::spawn(tailer.run(Duration::from_millis(10), sink));
    append(&log, &lines(1..=2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "run never read the lines");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}

#[test]
fn rotation_at_a_size_cap_loses_no_line_across_many_rotations() {
    use crate::tailer::{rotate_if_over, rotated_path};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cap = 3 * numbered(1).len() as u64;
    // The writer holds its file open as nginx does, and reopens the path only when told.
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
    };
    let mut writer = open();
    let mut tailer = Tailer::open(&log, Start::End).unwrap();
    let mut seen = Vec::new();
    let mut rotations = 0;
    let mut reopen_pending = false;
    for n in 1..=200 {
        writer.write_all(numbered(n).as_bytes()).unwrap();
        // Polls and rotations interleave with writes; nginx reopens one write late.
        if n % 2 == 0 {
            seen.extend(poll(&mut tailer).0);
            if reopen_pending {
                writer = open();
                reopen_pending = false;
            }
            if let Some(r) = rotate_if_over(&tailer, cap).unwrap() {
                assert_eq!(r.to, rotated_path(&log));
                assert!(r.size > cap);
                rotations += 1;
                reopen_pending = true;
            }
        }
    }
    writer = open();
    drop(writer);
    seen.extend(poll(&mut tailer).0);
    seen.extend(poll(&mut tailer).0);
    assert!(rotations > 10, "rotated {rotations} times");
    assert_eq!(seen, (1..=200).collect::<Vec<u32>>());
    assert!(dir.path().join("access.log.1").exists());
}

#[test]
fn no_rotation_under_the_cap_or_while_the_tailer_is_behind() {
    use crate::tailer::rotate_if_over;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let tailer = Tailer::open(&log, Start::End).unwrap();
    // No file yet, and the tailer has not opened one.
    assert_eq!(rotate_if_over(&tailer, 1).unwrap(), None);
    append(&log, &lines(1..=3));
    assert_eq!(
        rotate_if_over(&tailer, 1).unwrap(),
        None,
        "not yet followed"
    );
    let mut tailer = tailer;
    assert_eq!(poll(&mut tailer).0, [1, 2, 3]);
    assert_eq!(
        rotate_if_over(&tailer, 1 << 20).unwrap(),
        None,
        "under the cap"
    );
    assert!(rotate_if_over(&tailer, 1).unwrap().is_some());
    assert!(!log.exists());
}
