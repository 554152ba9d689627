//! The root logger: one JSON object per line on stdout (`ts`, `level`, `msg`, then the
//! record's fields), written by a background thread so a slow terminal or pipe never
//! stalls a request. The returned guard flushes every pending line when dropped, so
//! `main` keeps it alive until the very end.

use slog::{o, Drain, Level, Logger};
use slog_async::{AsyncGuard, OverflowStrategy};

use crate::settings::LogLevel;

/// Lines waiting for the writer thread; a full channel makes loggers wait rather than
/// drop lines, since operators grep these lines and the contract promises them.
const CHANNEL_SIZE: usize = 65_536;

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

pub fn init(level: LogLevel) -> (Logger, AsyncGuard) {
    let json = slog_json::Json::new(std::io::stdout())
        .set_newlines(true)
        .add_key_value(o!(
            "ts" => slog::PushFnValue(|_, ser| {
                ser.emit(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }),
            "level" => slog::FnValue(|record| level_name(record.level())),
            "msg" => slog::PushFnValue(|record, ser| ser.emit(record.msg())),
        ))
        .build()
        .fuse();
    let (drain, guard) = slog_async::Async::new(json)
        .chan_size(CHANNEL_SIZE)
        .overflow_strategy(OverflowStrategy::Block)
        .thread_name("log-writer".to_owned())
        .build_with_guard();
    let drain = drain.filter_level(slog_level(level)).fuse();
    (Logger::root(drain, o!()), guard)
}
