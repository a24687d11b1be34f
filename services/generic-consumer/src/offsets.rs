//! Per-partition contiguous watermarks: which offsets were handed to the pipeline, which
//! of them the pipeline has finished (written, dead-lettered or ignored), and so how far
//! the group may commit, and how many bytes the unfinished messages hold. The commit position is the first unfinished offset, or the one
//! after the last offset seen when everything is finished: never past an unwritten row.
//!
//! An acknowledgement states a fact about a message ("offset 41 of partition 3 is in the
//! sink"), not about an assignment, so one that arrives after its partition was revoked
//! and assigned again still holds, and one for an offset no longer tracked is ignored.

use std::collections::{BTreeMap, VecDeque};

/// One partition's offsets in flight, in the order they were consumed.
#[derive(Debug, Default, Clone)]
pub struct Watermark {
    /// Offsets handed to the pipeline and not yet released, each with its size in bytes
    /// (zero once finished).
    pending: VecDeque<Pending>,
    /// The offset after the last one seen.
    next: Option<i64>,
    unfinished: usize,
    unfinished_bytes: usize,
    /// The last position committed (or being committed).
    committed: Option<i64>,
}

impl Watermark {
    /// Records that `offset`, of `bytes` bytes, was handed to the pipeline.
    pub fn track(&mut self, offset: i64, bytes: usize) {
        if self.next.is_some_and(|next| offset < next) {
            // A rewind (a seek, an offset reset): what lies at or after `offset` will come
            // again and be tracked again; forget it rather than break the ordering.
            while self.pending.back().is_some_and(|p| p.offset >= offset) {
                if let Some(p) = self.pending.pop_back()
                    && !p.done
                {
                    self.unfinished -= 1;
                    self.unfinished_bytes -= p.bytes;
                }
            }
        }
        self.pending.push_back(Pending {
            offset,
            bytes,
            done: false,
        });
        self.unfinished += 1;
        self.unfinished_bytes += bytes;
        self.next = Some(offset + 1);
    }

    /// Records that the pipeline finished `offset`; false when it is not tracked.
    pub fn finish(&mut self, offset: i64) -> bool {
        let Ok(index) = self.pending.binary_search_by_key(&offset, |p| p.offset) else {
            return false;
        };
        let entry = &mut self.pending[index];
        if entry.done {
            return true;
        }
        entry.done = true;
        self.unfinished -= 1;
        self.unfinished_bytes -= std::mem::take(&mut entry.bytes);
        while self.pending.front().is_some_and(|p| p.done) {
            self.pending.pop_front();
        }
        true
    }

    /// Where the group may commit: the first unfinished offset, or the one after the last
    /// offset seen. `None` before anything was consumed.
    pub fn position(&self) -> Option<i64> {
        match self.pending.front() {
            Some(pending) => Some(pending.offset),
            None => self.next,
        }
    }

    /// Offsets handed over and not finished.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Bytes of the offsets handed over and not finished.
    pub fn unfinished_bytes(&self) -> usize {
        self.unfinished_bytes
    }
}

/// One offset in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    offset: i64,
    bytes: usize,
    done: bool,
}

/// The watermarks of every partition this instance owns.
#[derive(Debug, Default)]
pub struct Watermarks {
    partitions: BTreeMap<i32, Watermark>,
    unfinished: usize,
    unfinished_bytes: usize,
}

impl Watermarks {
    pub fn track(&mut self, partition: i32, offset: i64, bytes: usize) {
        let mark = self.partitions.entry(partition).or_default();
        let before = (mark.unfinished(), mark.unfinished_bytes());
        mark.track(offset, bytes);
        self.unfinished = self.unfinished + mark.unfinished() - before.0;
        self.unfinished_bytes = self.unfinished_bytes + mark.unfinished_bytes() - before.1;
    }

    pub fn finish(&mut self, partition: i32, offset: i64) {
        if let Some(mark) = self.partitions.get_mut(&partition) {
            let before = (mark.unfinished(), mark.unfinished_bytes());
            mark.finish(offset);
            self.unfinished -= before.0 - mark.unfinished();
            self.unfinished_bytes -= before.1 - mark.unfinished_bytes();
        }
    }

    /// Offsets handed over and not finished, over all partitions.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Bytes of the offsets handed over and not finished, over all partitions.
    pub fn unfinished_bytes(&self) -> usize {
        self.unfinished_bytes
    }

    /// Unfinished offsets of `partitions`.
    pub fn unfinished_in(&self, partitions: &[i32]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.partitions.get(p))
            .map(Watermark::unfinished)
            .sum()
    }

    /// Positions that moved since they were last taken (every known position with
    /// `all`), marking them taken.
    pub fn take_commits(&mut self, only: Option<&[i32]>, all: bool) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for (partition, mark) in &mut self.partitions {
            if only.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            if let Some(position) = mark.position()
                && (all || mark.committed != Some(position))
            {
                mark.committed = Some(position);
                moved.push((*partition, position));
            }
        }
        moved
    }

    /// Forgets partitions that are no longer ours.
    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(mark) = self.partitions.remove(partition) {
                self.unfinished -= mark.unfinished();
                self.unfinished_bytes -= mark.unfinished_bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_never_passes_an_unfinished_offset() {
        let mut mark = Watermark::default();
        assert_eq!(mark.position(), None);
        for offset in [10, 11, 12, 14] {
            mark.track(offset, 10);
        }
        assert_eq!(mark.position(), Some(10));
        assert!(mark.finish(11));
        assert!(mark.finish(14));
        assert_eq!(mark.position(), Some(10), "10 is still unwritten");
        assert_eq!(mark.unfinished(), 2);
        assert!(mark.finish(10));
        assert_eq!(mark.position(), Some(12));
        assert!(mark.finish(12));
        assert_eq!(
            mark.position(),
            Some(15),
            "past the gap at 13 once all is done"
        );
        assert_eq!(mark.unfinished(), 0);
        assert!(!mark.finish(99), "unknown offsets are ignored");
        assert_eq!(mark.position(), Some(15));
    }

    #[test]
    fn a_rewind_forgets_what_will_come_again() {
        let mut mark = Watermark::default();
        for offset in 0..5 {
            mark.track(offset, 10);
        }
        mark.finish(0);
        mark.track(2, 10);
        assert_eq!(mark.unfinished(), 2, "1 and the new 2");
        assert_eq!(mark.unfinished_bytes(), 20);
        assert_eq!(mark.position(), Some(1));
        mark.finish(1);
        mark.finish(2);
        assert_eq!(mark.position(), Some(3));
    }

    #[test]
    fn commits_are_taken_once_per_move_and_forgotten_partitions_release_their_count() {
        let mut marks = Watermarks::default();
        marks.track(0, 5, 100);
        marks.track(0, 6, 50);
        marks.track(1, 0, 7);
        assert_eq!(marks.unfinished(), 3);
        assert_eq!(marks.unfinished_bytes(), 157);
        assert_eq!(marks.take_commits(None, false), vec![(0, 5), (1, 0)]);
        assert_eq!(marks.take_commits(None, false), vec![]);
        assert_eq!(marks.take_commits(None, true), vec![(0, 5), (1, 0)]);
        marks.finish(0, 5);
        marks.finish(0, 6);
        assert_eq!(marks.take_commits(Some(&[1]), false), vec![]);
        assert_eq!(marks.take_commits(Some(&[0]), false), vec![(0, 7)]);
        assert_eq!(marks.unfinished_in(&[0, 1]), 1);
        assert_eq!(
            marks.unfinished_bytes(),
            7,
            "finished offsets release their bytes"
        );
        marks.forget(&[1]);
        assert_eq!(marks.unfinished(), 0);
        assert_eq!(marks.unfinished_bytes(), 0);
        marks.finish(1, 0);
        assert_eq!(
            marks.unfinished(),
            0,
            "a late ack for a forgotten partition"
        );
    }
}
