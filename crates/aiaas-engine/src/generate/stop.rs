//! Stop sequences: text is released only once it cannot be the start of a stop sequence, so a
//! stream never shows a stop sequence or half of one.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// No stop sequence yet; this text is safe to show.
    Continue(String),
    /// A stop sequence matched; this text precedes it and the generation ends.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopScan {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..at].to_string();
            self.held.clear();
            return StopScan::Stopped(before);
        }
        let keep = self.longest_partial_suffix();
        let release = self.held.len() - keep;
        let released = self.held[..release].to_string();
        self.held.drain(..release);
        StopScan::Continue(released)
    }

    /// Text held back because it might have begun a stop sequence; at the end it is plain text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop sequence.
    fn longest_partial_suffix(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            for (end, _) in stop.char_indices().skip(1) {
                if end > longest && self.held.ends_with(&stop[..end]) {
                    longest = end;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop_and_releases_it_when_it_diverges() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), StopScan::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopScan::Continue(String::new()));
        assert_eq!(m.push("x"), StopScan::Continue("ENx".into()));
    }

    #[test]
    fn stops_before_the_sequence_even_across_tokens() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "STOP".into()]);
        assert_eq!(m.push("one\n"), StopScan::Continue("one".into()));
        assert_eq!(m.push("\ntwo"), StopScan::Stopped(String::new()));
    }

    #[test]
    fn without_stops_everything_is_released() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("héllo"), StopScan::Continue("héllo".into()));
        assert_eq!(m.finish(), "");
    }
}
