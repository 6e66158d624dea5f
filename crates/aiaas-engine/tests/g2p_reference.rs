//! g2p-en's GRU against g2p-en itself: every word of `tests/reference/g2p-en.json` (common,
//! made-up, long enough for the 20-phoneme cap, mixed case, with digits, apostrophes and accents)
//! must get exactly the phonemes of g2p-en 2.1.0's `G2p.predict`, made by
//! `tests/reference/g2p_expected.py` (the command is in that script's docstring).

mod common;

use aiaas_models::g2p::G2p;

#[test]
fn g2p_en_pronounces_every_reference_word_as_g2p_en_does() {
    // The catalog entry is the checkpoint file itself (it has no companions).
    let Some(checkpoint) = common::model_file("g2p-en") else {
        return;
    };
    let model = G2p::load(&checkpoint).unwrap();
    let reference = common::reference("g2p-en");
    let cases = reference["cases"].as_array().unwrap();
    let mut mismatches = Vec::new();
    for case in cases {
        let word = case["word"].as_str().unwrap();
        let expected: Vec<&str> = (case["phonemes"].as_array().unwrap().iter())
            .map(|p| p.as_str().unwrap())
            .collect();
        let ours = model.phonemes(word);
        if ours != expected {
            mismatches.push(format!("{word:?}: ours {ours:?}, g2p-en {expected:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} words differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
