//! Choosing the next token from logits: penalties, temperature, nucleus (top-p), a seeded RNG,
//! and the log-probabilities OpenAI's `logprobs` reports.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    /// `Some(n)`: report each chosen token's log-probability and the `n` most likely ones.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: u32,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// How often each token was generated so far, for the penalties.
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            counts: HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. Log-probabilities describe the model's own distribution, before
    /// penalties and temperature, as OpenAI reports them.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, Option<TokenLogprob>) {
        let log_probs = self.params.logprobs.map(|_| log_softmax(logits));
        self.apply_penalties(logits);
        let token = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.sample_nucleus(logits)
        };
        *self.counts.entry(token).or_default() += 1;
        let logprob = log_probs.map(|lp| TokenLogprob {
            logprob: lp[token as usize],
            top: top_n(&lp, self.params.logprobs.unwrap_or(0)),
        });
        (token, logprob)
    }

    /// OpenAI's definition: `logit -= count * frequency_penalty + (count > 0) * presence_penalty`
    /// over the tokens generated so far.
    fn apply_penalties(&self, logits: &mut [f32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        for (&token, &count) in &self.counts {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit -= count as f32 * frequency + presence;
            }
        }
    }

    fn sample_nucleus(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
            .collect();
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        if self.params.top_p < 1.0 {
            candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let mut mass = 0.0;
            let mut keep = 0;
            for (_, p) in &candidates {
                mass += p / total;
                keep += 1;
                if mass >= self.params.top_p {
                    break;
                }
            }
            candidates.truncate(keep.max(1));
        }
        let kept: f32 = candidates.iter().map(|c| c.1).sum();
        let mut draw = self.rng.random::<f32>() * kept;
        for &(token, p) in &candidates {
            if draw < p {
                return token;
            }
            draw -= p;
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

/// The first index of the largest logit (llama.cpp's greedy choice on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| l - log_sum).collect()
}

fn top_n(log_probs: &[f32], n: usize) -> Vec<TopLogprob> {
    let mut order: Vec<u32> = (0..log_probs.len() as u32).collect();
    let n = n.min(order.len());
    if n == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(n - 1, |&a, &b| {
        log_probs[b as usize].total_cmp(&log_probs[a as usize])
    });
    order.truncate(n);
    order.sort_by(|&a, &b| log_probs[b as usize].total_cmp(&log_probs[a as usize]));
    order
        .into_iter()
        .map(|token| TopLogprob {
            token,
            logprob: log_probs[token as usize],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1));
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]).0, 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, seed));
            (0..20)
                .map(|_| s.sample(&mut logits.clone()).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best_token() {
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.01,
            ..params(1.0, 3)
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&mut [0.0, 5.0, 1.0]).0, 1);
        }
    }

    #[test]
    fn frequency_penalty_moves_greedy_off_a_repeated_token() {
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 2.0,
            ..params(0.0, 1)
        });
        assert_eq!(s.sample(&mut [1.0, 0.5]).0, 0);
        assert_eq!(s.sample(&mut [1.0, 0.5]).0, 1);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut s = Sampler::new(SamplingParams {
            logprobs: Some(2),
            ..params(0.0, 1)
        });
        let (token, lp) = s.sample(&mut [0.0, 2.0, 1.0]);
        let lp = lp.unwrap();
        assert_eq!(token, 1);
        assert_eq!(lp.top.iter().map(|t| t.token).collect::<Vec<_>>(), [1, 2]);
        let total: f32 = [0.0f32, 2.0, 1.0].iter().map(|l| (l - 2.0f32).exp()).sum();
        assert!((lp.logprob - (1.0 / total).ln()).abs() < 1e-5);
    }
}
