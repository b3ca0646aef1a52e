//! Following an access log by path: [`Tailer`], where it starts ([`Start`], [`Position`]) and
//! what one [`Tailer::poll`] read ([`PollStats`]).
//!
//! Only complete lines are parsed; a partial last line waits for its newline, up to
//! [`MAX_LINE`] bytes. The file may be missing (polled until it appears, then read from 0),
//! rotated (a new inode at the path: the old file is read to its end, then the new one from 0),
//! or truncated in place (size below the offset: read again from 0). After a rename rotation
//! nginx keeps writing to the old file until it reopens its logs (`USR1`), so the old file is
//! still read until it has been quiet for [`RETIRED_GRACE`]. A truncation followed by writes
//! past the old offset before the next poll cannot be seen; `copytruncate` loses lines anyway.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::parse::{parse_line, ParseError, ProxyRecord};

/// The longest line kept; a longer one is dropped and counted as malformed.
pub const MAX_LINE: usize = 64 * 1024;
/// How long the file before a rotation is still read once it stops growing.
pub const RETIRED_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// Where a new [`Tailer`] starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// After the last complete line now in the file: a fresh daemon skips history. A file
    /// that does not exist yet is read from 0 once it appears.
    #[default]
    End,
    /// A [`Position`] saved by an earlier tailer. If the file at the path is no longer that
    /// inode, the old file is looked for beside it (rotated by rename) and read from the
    /// offset first; the file at the path is then read from 0.
    Offset { inode: u64, offset: u64 },
}

/// The end of the last complete line read, to persist and resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub inode: u64,
    pub offset: u64,
}

impl From<Position> for Start {
    fn from(p: Position) -> Start {
        Start::Offset {
            inode: p.inode,
            offset: p.offset,
        }
    }
}

/// What one [`Tailer::poll`] read; `lines == records + skipped + malformed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStats {
    pub lines: u64,
    pub records: u64,
    /// Lines of servers switchyard does not own ([`ParseError::NotOurs`]).
    pub skipped: u64,
    pub malformed: u64,
    /// The first malformed line's file, offset and reason, to log once.
    pub first_malformed: Option<String>,
}

pub struct Tailer {
    path: PathBuf,
    /// The file now at the path, once it has existed.
    current: Option<Source>,
    /// The file before the last rotation, and when it last grew.
    retired: Option<(Source, Instant)>,
    buf: Vec<u8>,
}

/// One open file and how far it has been read.
struct Source {
    file: File,
    inode: u64,
    /// Bytes read so far, including [`Source::partial`].
    offset: u64,
    /// The start of a line whose newline has not been read yet.
    partial: Vec<u8>,
    /// Inside a line longer than [`MAX_LINE`]: dropping bytes until its newline.
    discarding: bool,
}

impl Tailer {
    /// Opens `path` (which need not exist yet) at `start`.
    pub fn open(path: impl Into<PathBuf>, start: Start) -> io::Result<Tailer> {
        let path = path.into();
        let mut tailer = Tailer {
            current: None,
            retired: None,
            buf: vec![0; READ_CHUNK],
            path,
        };
        let path = &tailer.path;
        let at =
            |file, inode, offset| Source::at(file, inode, offset).map_err(|e| context(e, path));
        match (start, open_file(path)?) {
            (Start::End, Some((file, inode))) => {
                let len = file.metadata().map_err(|e| context(e, path))?.len();
                let mut source = at(file, inode, len)?;
                // Starting inside a line (nginx mid-write): skip to its end.
                source.discarding =
                    len > 0 && last_byte(&source.file, len).map_err(|e| context(e, path))? != b'\n';
                tailer.current = Some(source);
            }
            (Start::End, None) => {}
            (Start::Offset { inode, offset }, Some((file, now))) if inode == now => {
                tailer.current = Some(at(file, inode, offset)?);
            }
            (Start::Offset { inode, offset }, opened) => {
                let old = rotated_sibling(path, inode)
                    .map(|file| at(file, inode, offset))
                    .transpose()?;
                let new = opened.map(|(file, inode)| at(file, inode, 0)).transpose()?;
                // With no file at the path nginx still writes to the old one: it stays current.
                match new {
                    Some(new) => {
                        tailer.current = Some(new);
                        tailer.retired = old.map(|old| (old, Instant::now()));
                    }
                    None => tailer.current = old,
                }
            }
        }
        Ok(tailer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a restarted tailer should resume; `None` until a file has been opened.
    pub fn position(&self) -> Option<Position> {
        self.current.as_ref().map(|s| Position {
            inode: s.inode,
            offset: s.offset - s.partial.len() as u64,
        })
    }

    /// Reads every complete line written since the last poll and hands each record to `out`.
    pub fn poll(&mut self, out: &mut impl FnMut(ProxyRecord)) -> io::Result<PollStats> {
        let mut stats = PollStats::default();
        let path = self.path.clone();
        if let Some((source, last_grew)) = &mut self.retired {
            if source.drain(&mut self.buf, out, &mut stats, &path)? > 0 {
                *last_grew = Instant::now();
            } else if last_grew.elapsed() >= RETIRED_GRACE {
                let (mut source, _) = self.retired.take().expect("matched above");
                source.close(&mut stats);
            }
        }
        if self.current.is_none() {
            match open_file(&path)? {
                Some((file, inode)) => {
                    self.current = Some(Source::at(file, inode, 0).map_err(|e| context(e, &path))?)
                }
                None => return Ok(stats),
            }
        }
        loop {
            let current = self.current.as_mut().expect("opened above");
            current.drain(&mut self.buf, out, &mut stats, &path)?;
            let now = match std::fs::metadata(&path) {
                Ok(meta) => meta.ino(),
                // Renamed away and not yet recreated: nginx still writes to the file we hold.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(context(e, &path)),
            };
            if now == current.inode {
                break;
            }
            let Some((file, inode)) = open_file(&path)? else {
                break;
            };
            let new = Source::at(file, inode, 0).map_err(|e| context(e, &path))?;
            let old = std::mem::replace(current, new);
            if let Some((mut older, _)) = self.retired.replace((old, Instant::now())) {
                older.drain(&mut self.buf, out, &mut stats, &path)?;
                older.close(&mut stats);
            }
        }
        Ok(stats)
    }

    /// Polls every `interval` on tokio's blocking pool until an I/O error, which it returns
    /// with the tailer, so the caller can log it, persist the position, and run it again.
    pub async fn run<F>(mut self, interval: Duration, mut sink: F) -> (Tailer, io::Error)
    where
        F: FnMut(ProxyRecord) + Send + 'static,
    {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let polled = tokio::task::spawn_blocking(move || {
                let result = self.poll(&mut sink);
                (self, sink, result)
            })
            .await;
            match polled {
                Ok((tailer, returned_sink, Ok(_))) => (self, sink) = (tailer, returned_sink),
                Ok((tailer, _, Err(e))) => return (tailer, e),
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
    }
}

impl Source {
    fn at(mut file: File, inode: u64, offset: u64) -> io::Result<Source> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(Source {
            file,
            inode,
            offset,
            partial: Vec::new(),
            discarding: false,
        })
    }

    /// Reads to the end of the file; returns the bytes read.
    fn drain(
        &mut self,
        buf: &mut [u8],
        out: &mut impl FnMut(ProxyRecord),
        stats: &mut PollStats,
        path: &Path,
    ) -> io::Result<u64> {
        let len = self.file.metadata().map_err(|e| context(e, path))?.len();
        if len < self.offset {
            // Truncated in place (copytruncate): whatever it held is gone.
            self.close(stats);
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(|e| context(e, path))?;
            self.offset = 0;
        }
        let mut read = 0;
        loop {
            let n = match self.file.read(buf) {
                Ok(0) => return Ok(read),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(context(e, path)),
            };
            self.consume(&buf[..n], out, stats, path);
            self.offset += n as u64;
            read += n as u64;
        }
    }

    /// Splits `bytes` (read at `self.offset`) into lines, keeping a trailing partial one.
    fn consume(
        &mut self,
        mut bytes: &[u8],
        out: &mut impl FnMut(ProxyRecord),
        stats: &mut PollStats,
        path: &Path,
    ) {
        let mut at = self.offset;
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let line = &bytes[..newline];
            if std::mem::take(&mut self.discarding) {
                // The end of an overlong line, already counted.
            } else if self.partial.is_empty() {
                handle(line, out, stats, || {
                    format!("{} at byte {at}", path.display())
                });
            } else {
                self.partial.extend_from_slice(line);
                let start = at - (self.partial.len() - line.len()) as u64;
                handle(&self.partial, out, stats, || {
                    format!("{} at byte {start}", path.display())
                });
                self.partial.clear();
            }
            bytes = &bytes[newline + 1..];
            at += newline as u64 + 1;
        }
        if self.discarding || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            let start = at - self.partial.len() as u64;
            self.partial.clear();
            self.discarding = true;
            malformed(stats, || {
                format!(
                    "{} at byte {start}: line longer than {MAX_LINE} bytes",
                    path.display()
                )
            });
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// Gives up on the partial line (the file was truncated or is being let go).
    fn close(&mut self, stats: &mut PollStats) {
        if !std::mem::take(&mut self.partial).is_empty() {
            malformed(stats, || {
                "a line cut off by truncation or rotation".to_owned()
            });
        }
        self.discarding = false;
    }
}

fn handle(
    line: &[u8],
    out: &mut impl FnMut(ProxyRecord),
    stats: &mut PollStats,
    where_: impl FnOnce() -> String,
) {
    if line.len() > MAX_LINE {
        return malformed(stats, || {
            format!("{}: line longer than {MAX_LINE} bytes", where_())
        });
    }
    let parsed = match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(_) => Err(ParseError::Malformed("not UTF-8".to_owned())),
    };
    match parsed {
        Ok(record) => {
            stats.lines += 1;
            stats.records += 1;
            out(record);
        }
        Err(ParseError::NotOurs) => {
            stats.lines += 1;
            stats.skipped += 1;
        }
        Err(e) => malformed(stats, || format!("{}: {e}", where_())),
    }
}

fn malformed(stats: &mut PollStats, what: impl FnOnce() -> String) {
    stats.lines += 1;
    stats.malformed += 1;
    if stats.first_malformed.is_none() {
        stats.first_malformed = Some(what());
    }
}

/// The file and its inode, or `None` if nothing is at `path`.
fn open_file(path: &Path) -> io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let inode = file.metadata().map_err(|e| context(e, path))?.ino();
            Ok(Some((file, inode)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(context(e, path)),
    }
}

/// The file beside `path` with inode `inode` (`access.log.1` after a rename), if any.
fn rotated_sibling(path: &Path, inode: u64) -> Option<File> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.ino() == inode)
        })
        .and_then(|entry| File::open(entry.path()).ok())
}

fn last_byte(file: &File, len: u64) -> io::Result<u8> {
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, len - 1)?;
    Ok(byte[0])
}

fn context(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
}
