//! Batches of messages between stages.
//!
//! A message per small file cost more than the work it carried: a first backup of 100,000 small
//! files made 192,000 context switches, most of them waiting threads yielding the CPU in turn to
//! one another (two cores, a dozen stage threads). So the busy queues carry batches. A stage
//! gathers its outputs in a `Batcher`, which sends when the batch is full, and the stage flushes
//! before it would wait for input (`recv_or_flush`) and when its input ends: nothing ever sits in
//! a batch while its stage sleeps, so batching adds no waiting and cannot deadlock the budget
//! (a batch that holds permits is always on its way).
#![forbid(unsafe_code)]

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// Items per batch of data (chunks, blobs) and of file events.
pub const ITEMS: usize = 64;
/// Bytes of data per batch: a batch of large chunks goes as soon as it has one.
pub const BYTES: usize = 256 << 10;

/// The receiving side went away: the pipeline is shutting down.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// Items for one queue, sent `max_items` at a time, or sooner once they weigh `max_weight`
/// (bytes, for data: a batch of large chunks goes at once).
pub struct Batcher<T> {
    tx: Sender<Vec<T>>,
    items: Vec<T>,
    weight: usize,
    max_items: usize,
    max_weight: usize,
}

impl<T> Batcher<T> {
    pub fn new(tx: Sender<Vec<T>>, max_items: usize, max_weight: usize) -> Self {
        Batcher { tx, items: Vec::new(), weight: 0, max_items: max_items.max(1), max_weight }
    }

    /// Adds `item`, weighing `weight`; sends the batch if it is full.
    pub fn push(&mut self, item: T, weight: usize) -> Result<(), Closed> {
        self.items.push(item);
        self.weight += weight;
        if self.items.len() >= self.max_items || self.weight >= self.max_weight {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends what is gathered (waiting for room in the queue).
    pub fn flush(&mut self) -> Result<(), Closed> {
        if self.items.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.items, Vec::with_capacity(self.max_items.min(64)));
        self.weight = 0;
        self.tx.send(batch).map_err(|_| Closed)
    }
}

/// The next message of `input`; if none is waiting, `flush` runs first (the stage is about to
/// sleep). None when the input is closed and drained, or when `flush` finds the output closed.
pub fn recv_or_flush<T>(input: &Receiver<T>, flush: impl FnOnce() -> Result<(), Closed>) -> Option<T> {
    match input.try_recv() {
        Ok(m) => Some(m),
        Err(TryRecvError::Disconnected) => None,
        Err(TryRecvError::Empty) => {
            flush().ok()?;
            input.recv().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fill_by_count_and_weight_and_flush_before_waiting() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut b = Batcher::new(tx, 3, 100);
        b.push(1, 1).unwrap();
        b.push(2, 1).unwrap();
        assert!(rx.try_recv().is_err(), "not full yet");
        b.push(3, 1).unwrap();
        assert_eq!(rx.try_recv(), Ok(vec![1, 2, 3]));
        b.push(4, 100).unwrap();
        assert_eq!(rx.try_recv(), Ok(vec![4]), "heavy enough to go alone");
        b.push(5, 1).unwrap();

        // recv_or_flush sends the gathered item before it waits on an empty input.
        let (in_tx, in_rx) = crossbeam_channel::unbounded::<u8>();
        drop(in_tx);
        assert_eq!(recv_or_flush(&in_rx, || b.flush()), None);
        // Closed and drained: nothing to wait for, and no flush needed (the caller flushes
        // at its end).
        b.flush().unwrap();
        assert_eq!(rx.try_recv(), Ok(vec![5]));

        let (in_tx, in_rx) = crossbeam_channel::unbounded::<u8>();
        in_tx.send(7).unwrap();
        b.push(6, 1).unwrap();
        assert_eq!(recv_or_flush(&in_rx, || b.flush()), Some(7), "a waiting message comes first");
        assert!(rx.try_recv().is_err(), "and no flush was needed");
        let t = std::thread::spawn(move || recv_or_flush(&in_rx, || b.flush()));
        assert_eq!(rx.recv(), Ok(vec![6]), "flushed before waiting");
        in_tx.send(8).unwrap();
        assert_eq!(t.join().unwrap(), Some(8));

        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        drop(rx);
        let mut b = Batcher::new(tx, 1, 1);
        assert_eq!(b.push(1, 0), Err(Closed));
    }
}
