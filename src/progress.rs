//! The progress line of a long backup: files and bytes done (of the total found so far),
//! throughput, the current path, and an ETA once the scan has finished. Shown only when stderr is
//! a terminal; redrawn a few times a second by its own thread from the engine's counters.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stages::Progress;

use crate::output;

pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Starts drawing `progress` when `enabled` (a terminal, no --json).
    pub fn start(progress: Arc<Progress>, enabled: bool) -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled
            .then(|| {
                let stop = stop.clone();
                std::thread::Builder::new().name("progress".into()).spawn(move || draw(&progress, &stop)).ok()
            })
            .flatten();
        Display { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw(p: &Progress, stop: &AtomicBool) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
    if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
        bar.set_style(style);
    }
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        bar.set_message(line(p, started.elapsed()));
        bar.tick();
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

/// `1234/5678 files  1.2 GiB/3.4 GiB  210 MiB/s  ETA 0:11  /home/me/current/file`
pub fn line(p: &Progress, elapsed: Duration) -> String {
    let files = Progress::get(&p.files_done);
    let bytes = Progress::get(&p.bytes_done);
    let scanned = p.scan_done.load(Ordering::Relaxed);
    let (ftotal, btotal) = (Progress::get(&p.files_total), Progress::get(&p.bytes_total));
    let more = if scanned { "" } else { "+" };
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = bytes as f64 / secs;
    let eta = if scanned && rate > 0.0 {
        let left = btotal.saturating_sub(bytes) as f64 / rate;
        format!("  ETA {}:{:02}", (left / 60.0) as u64, (left % 60.0) as u64)
    } else {
        String::new()
    };
    let current = p.current.lock().map(|c| c.display().to_string()).unwrap_or_default();
    format!(
        "{files}/{ftotal}{more} files  {}/{}{more}  {}/s{eta}  {current}",
        output::size(bytes),
        output::size(btotal),
        output::size(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_only_after_the_scan() {
        let p = Progress::default();
        Progress::add(&p.files_total, 10);
        Progress::add(&p.bytes_total, 1000);
        Progress::add(&p.files_done, 5);
        Progress::add(&p.bytes_done, 500);
        let l = line(&p, Duration::from_secs(10));
        assert!(l.starts_with("5/10+ files") && !l.contains("ETA"), "{l}");
        p.scan_done.store(true, Ordering::Relaxed);
        let l = line(&p, Duration::from_secs(10));
        assert!(l.contains("ETA 0:10"), "{l}");
    }
}
