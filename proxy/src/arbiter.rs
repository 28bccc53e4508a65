//! Which routing table to use when it arrives by two paths: the mounted file
//! (the kubelet's copy, up to a minute or two late) and the API-server watch
//! (the fast path).
//!
//! Each source keeps its latest valid table. The one in use has the highest
//! `generation`, ties going to the most recent arrival, so a hand-edited
//! file with an unchanged generation still applies. One exception: a source
//! that only repeats the table in use (same generation and digest) does not
//! displace it, because the kubelet catching up with what the API already
//! delivered is not news. A source's new table replaces its old one even at
//! a lower generation (an operator that starts counting again), so both
//! sources converge on what the operator writes now.
//!
//! Pure: no I/O and no clock; the caller publishes the choice.

use std::sync::Arc;

use crate::state::Loaded;

/// Where a routing table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The mounted `routes/` directory.
    File,
    /// The `weft-routes` ConfigMap, watched through the API server.
    Api,
}

impl Source {
    const ALL: [Source; 2] = [Source::File, Source::Api];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

struct Entry<T> {
    table: Arc<Loaded<T>>,
    /// Order of arrival across both sources; later is higher.
    arrival: u64,
}

/// The latest table of each source, and which one is in use.
pub struct Arbiter<T> {
    file: Option<Entry<T>>,
    api: Option<Entry<T>>,
    arrivals: u64,
    in_use: Option<Source>,
}

impl<T> Default for Arbiter<T> {
    fn default() -> Self {
        Self {
            file: None,
            api: None,
            arrivals: 0,
            in_use: None,
        }
    }
}

impl<T> Arbiter<T> {
    /// Records `table` as `source`'s latest and returns the table to use now
    /// (`None` only before anything was offered, which cannot follow here).
    pub fn offer(&mut self, source: Source, table: Arc<Loaded<T>>) -> Option<Arc<Loaded<T>>> {
        self.arrivals += 1;
        let entry = Entry {
            table,
            arrival: self.arrivals,
        };
        match source {
            Source::File => self.file = Some(entry),
            Source::Api => self.api = Some(entry),
        }
        let (chosen, table) = self.choose().map(|(s, e)| (s, e.table.clone()))?;
        self.in_use = Some(chosen);
        Some(table)
    }

    /// The latest table of each source that delivered one.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Loaded<T>>> {
        [&self.file, &self.api]
            .into_iter()
            .flatten()
            .map(|entry| &entry.table)
    }

    /// The source of the table in use.
    pub fn in_use(&self) -> Option<Source> {
        self.in_use
    }

    fn entry(&self, source: Source) -> Option<&Entry<T>> {
        match source {
            Source::File => self.file.as_ref(),
            Source::Api => self.api.as_ref(),
        }
    }

    fn choose(&self) -> Option<(Source, &Entry<T>)> {
        let best = Source::ALL
            .into_iter()
            .filter_map(|s| Some((s, self.entry(s)?)))
            .max_by_key(|(_, e)| (e.table.generation, e.arrival))?;
        let current = self.in_use.and_then(|s| Some((s, self.entry(s)?)));
        match current {
            Some((s, e)) if same_table(&e.table, &best.1.table) => Some((s, e)),
            _ => Some(best),
        }
    }
}

fn same_table<T>(a: &Loaded<T>, b: &Loaded<T>) -> bool {
    a.generation == b.generation && a.digest == b.digest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::SystemTime;

    use super::*;

    fn table(generation: u64, content: &str) -> Arc<Loaded<()>> {
        Arc::new(Loaded {
            value: (),
            source: content.into(),
            key: None,
            digest: content.into(),
            generation,
            loaded_at: SystemTime::UNIX_EPOCH,
        })
    }

    /// Offers each `(source, generation, content)` in turn; returns the
    /// content in use after each.
    fn run(offers: &[(Source, u64, &str)]) -> Vec<String> {
        let mut arbiter = Arbiter::default();
        offers
            .iter()
            .map(|&(s, g, c)| arbiter.offer(s, table(g, c)).unwrap().source.clone())
            .collect()
    }

    use Source::{Api, File};

    #[test]
    fn the_higher_generation_wins_whichever_path_it_takes() {
        assert_eq!(
            run(&[
                (File, 1, "f1"),
                (Api, 5, "a5"),
                (File, 9, "f9"),
                (Api, 8, "a8")
            ]),
            ["f1", "a5", "f9", "f9"]
        );
    }

    #[test]
    fn a_tie_goes_to_the_most_recent_arrival() {
        assert_eq!(
            run(&[(File, 3, "f3"), (File, 3, "edited"), (Api, 3, "a3")]),
            ["f3", "edited", "a3"]
        );
    }

    #[test]
    fn a_source_repeating_the_table_in_use_does_not_displace_it() {
        let mut arbiter = Arbiter::default();
        arbiter.offer(Api, table(4, "same"));
        assert_eq!(arbiter.in_use(), Some(Api));
        arbiter.offer(File, table(4, "same"));
        assert_eq!(arbiter.in_use(), Some(Api), "the kubelet caught up");
    }

    #[test]
    fn the_source_in_use_gets_its_newest_copy() {
        let mut arbiter = Arbiter::default();
        let first = table(2, "x");
        arbiter.offer(File, first.clone());
        let again = table(2, "x");
        let chosen = arbiter.offer(File, again.clone()).unwrap();
        assert!(Arc::ptr_eq(&chosen, &again));
    }

    #[test]
    fn a_source_starting_over_at_a_lower_generation_replaces_its_old_table() {
        assert_eq!(
            run(&[(Api, 7, "a7"), (File, 5, "f5"), (Api, 2, "a2")]),
            ["a7", "a7", "f5"]
        );
        assert_eq!(run(&[(Api, 7, "a7"), (Api, 2, "a2")]), ["a7", "a2"]);
    }

    #[test]
    fn the_in_use_table_leaving_its_slot_is_not_kept_by_its_twin() {
        // File in use at 5; the API repeats it; then the file goes back to 4:
        // the API's copy of 5 is used, labelled as the API's.
        let mut arbiter = Arbiter::default();
        arbiter.offer(File, table(5, "t"));
        arbiter.offer(Api, table(5, "t"));
        assert_eq!(arbiter.in_use(), Some(File));
        arbiter.offer(File, table(4, "old"));
        assert_eq!(arbiter.in_use(), Some(Api));
    }
}
