//! The root logger: one JSON object per line on stdout (`ts`, `level`, `msg`, then the
//! record's fields), written by a background thread so a slow terminal or pipe never
//! stalls a request. The returned guard flushes every pending line when dropped, so
//! `main` keeps it alive until the very end.
//!
//! The thread writes whatever lines are waiting with one `write` and then waits for the
//! next: a busy service logs a line per dispatch attempt, and a system call per line cost
//! as much as formatting it (perf at 64 connections). A quiet service still gets each
//! line out as soon as it is logged, since a lone line is a batch of one; a busy one gets
//! its lines within a millisecond or so (`LINGER`).

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use slog::{o, Drain, Level, Logger, OwnedKVList, Record};
use slog_async::AsyncRecord;

use crate::settings::LogLevel;

/// Lines waiting for the writer thread; a full channel makes loggers wait rather than
/// drop lines, since operators grep these lines and the contract promises them.
const CHANNEL_SIZE: usize = 65_536;
/// Bytes gathered before a write even if more lines wait, so a flood is written in
/// pieces of bounded size rather than held in memory until it stops.
const WRITE_AT: usize = 256 * 1024;
/// How long the writer lets lines gather after a batch of more than one. Why: a logger
/// whose line finds the writer asleep wakes it with a system call, and a busy service
/// logging a line per attempt woke it for nearly every line (a fifth of a provider
/// thread's samples in perf). While it lingers, lines queue without waking anyone; a lone
/// line still goes out at once.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

fn slog_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warning => Level::Warning,
        LogLevel::Error => Level::Error,
    }
}

/// What the writer thread reads: a line and when it was logged, or the guard's word that
/// it is time to stop.
enum ToWrite {
    Line(AsyncRecord, DateTime<Utc>),
    Finish,
}

thread_local! {
    /// When the line the writer thread is formatting was logged: `ts` says when something
    /// happened, not when the writer got to it (a millisecond or more later under load).
    static LOGGED_AT: Cell<Option<DateTime<Utc>>> = const { Cell::new(None) };
}

/// Hands records to the writer thread, already owned (`AsyncRecord`) so they can cross.
struct ToWriter {
    lines: SyncSender<ToWrite>,
}

impl Drain for ToWriter {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Fails only once the writer is gone, at the very end: nothing is left to tell.
        let line = ToWrite::Line(AsyncRecord::from(record, values), Utc::now());
        let _ = self.lines.send(line);
        Ok(())
    }
}

/// Where the JSON drain puts its lines: a buffer the writer thread empties into stdout.
#[derive(Clone, Default)]
struct Pending(Rc<RefCell<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_drain(out: Pending) -> impl Drain<Ok = (), Err = slog::Never> {
    slog_json::Json::new(out)
        .set_newlines(true)
        .add_key_value(o!(
            "ts" => slog::PushFnValue(|_, ser| {
                let at = LOGGED_AT.get().unwrap_or_else(Utc::now);
                ser.emit(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }),
            "level" => slog::FnValue(|record| level_name(record.level())),
            "msg" => slog::PushFnValue(|record, ser| ser.emit(record.msg())),
        ))
        .build()
        .fuse()
}

/// Formats every waiting line, then writes them at once; returns at `Finish`, or once
/// every logger is gone.
fn write_lines(lines: Receiver<ToWrite>) {
    let pending = Pending::default();
    let json = json_drain(pending.clone());
    let stdout = std::io::stdout();
    let mut finished = false;
    while !finished {
        let Ok(first) = lines.recv() else { break };
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(message) = next.take() {
            match message {
                ToWrite::Line(line, at) => {
                    batch += 1;
                    LOGGED_AT.set(Some(at));
                    let _ = line.log_to(&json);
                }
                ToWrite::Finish => {
                    finished = true;
                    break;
                }
            }
            if pending.0.borrow().len() < WRITE_AT {
                next = lines.try_recv().ok();
            }
        }
        let mut bytes = pending.0.borrow_mut();
        // Nowhere to report a closed stdout; the service carries on without its log.
        // Locked for the write only, so a `print!` elsewhere never waits for the thread's
        // whole life.
        let mut out = stdout.lock();
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
        drop(out);
        bytes.clear();
        drop(bytes);
        if batch > 1 && !finished {
            std::thread::sleep(LINGER);
        }
    }
}

/// The writer thread's other end: dropping it writes every line logged so far and waits
/// for that (threads that still hold a `Logger` at the very end may outlive it, so it
/// does not wait for them to go).
pub struct LogGuard {
    finish: SyncSender<ToWrite>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if self.finish.send(ToWrite::Finish).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

pub fn init(level: LogLevel) -> (Logger, LogGuard) {
    let (sender, lines) = mpsc::sync_channel(CHANNEL_SIZE);
    // Without its thread the service still runs; its lines go nowhere.
    let thread = std::thread::Builder::new()
        .name("log-writer".to_owned())
        .spawn(move || write_lines(lines))
        .ok();
    let level = slog_level(level);
    // `listening` at every level: with port 0 it is the only way to learn the address
    // (CONTRACT 1), and scripts wait for it.
    let drain = slog::Filter::new(
        ToWriter {
            lines: sender.clone(),
        },
        move |record: &slog::Record| {
            record.level().is_at_least(level) || record.msg().as_str() == Some("listening")
        },
    )
    .fuse();
    let guard = LogGuard {
        finish: sender,
        thread,
    };
    (Logger::root(drain, o!()), guard)
}
