//! EfficientNet-Lite0 against an independent numpy forward pass on a real photo: matplotlib's
//! `grace_hopper.jpg` (fetched by `scripts/fetch-test-images`), prepared as torchvision's
//! ImageNet evaluation transform prepares it (PIL), compared with the top classes and
//! probabilities in `tests/reference/efficientnet-lite0.json` (made by
//! `tests/reference/efficientnet_expected.py` with PIL and numpy).
//!
//! The network is checked on PIL's prepared crop itself (`efficientnet-lite0-input.png`,
//! lossless), then the whole path from the JPEG. This photo sits on the border between
//! "military uniform" and "mortarboard" (0.237 and 0.230): a decoder that differs from PIL's
//! libjpeg-turbo by a level on a few pixels swaps them, which is why JPEGs are decoded with
//! libjpeg-turbo's own code.

mod common;

use std::path::{Path, PathBuf};

use aiaas_engine::fetch;
use aiaas_models::vision::{softmax, EfficientNet, ImagePreprocessing};
use serde_json::Value;

const MODEL: &str = "efficientnet-lite0";

/// The test photos' folder; a missing photo fails the test unless skips are allowed (and then
/// says so).
fn images() -> Option<PathBuf> {
    let folder = fetch::cache_dir().join("testdata/images");
    if folder.join(".complete").is_file() {
        return Some(folder);
    }
    if std::env::var("AIAAS_ALLOW_MODEL_SKIP").is_ok_and(|v| v == "1") {
        eprintln!(
            "\n!!! SKIPPED EfficientNet reference test: run scripts/fetch-test-images first\n"
        );
        return None;
    }
    panic!(
        "no test images in {}: run scripts/fetch-test-images",
        folder.display()
    );
}

/// The model's folder (weights and class names).
fn model_folder() -> Option<PathBuf> {
    let path = common::model_file(MODEL)?;
    Some(if path.is_dir() {
        path
    } else {
        path.parent().unwrap().to_path_buf()
    })
}

/// The class names in the model's order: timm's synset list and each synset's lemmas.
fn labels(folder: &Path) -> Vec<String> {
    let read = |name: &str| std::fs::read_to_string(folder.join(name)).unwrap();
    let lemmas = read("imagenet_synset_to_lemma.txt");
    let lemma = |synset: &str| {
        (lemmas.lines())
            .find_map(|line| line.strip_prefix(synset)?.strip_prefix('\t'))
            .unwrap()
            .to_string()
    };
    read("imagenet_synsets.txt")
        .split_whitespace()
        .map(lemma)
        .collect()
}

/// Class indices by decreasing probability.
fn ranking(probabilities: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order
}

/// The image mirrored left to right (CHW).
fn mirrored(image: &[f32], side: usize) -> Vec<f32> {
    let mut out = image.to_vec();
    for row in out.chunks_exact_mut(side) {
        row.reverse();
    }
    out
}

/// The reference's classes as (index, label, probability), most likely first.
fn expected_classes(reference: &Value) -> Vec<(usize, String, f64)> {
    (reference["top5"].as_array().unwrap().iter())
        .map(|c| {
            let index = c["index"].as_u64().unwrap() as usize;
            let label = c["label"].as_str().unwrap().to_string();
            (index, label, c["probability"].as_f64().unwrap())
        })
        .collect()
}

fn print_top(
    what: &str,
    probabilities: &[f32],
    labels: &[String],
    expected: &[(usize, String, f64)],
) {
    println!("{what}:");
    for (rank, &index) in ranking(probabilities).iter().take(5).enumerate() {
        let (reference, _, p) = &expected[rank];
        println!(
            "  #{} {index} {:?}: {:.5} (reference #{}: {reference} {p:.5})",
            rank + 1,
            labels[index],
            probabilities[index],
            rank + 1
        );
    }
}

#[test]
fn efficientnet_lite0_classifies_a_photo_as_the_reference_does() {
    let (Some(folder), Some(images)) = (model_folder(), images()) else {
        return;
    };
    let model = EfficientNet::load(&folder.join("efficientnet-lite0-57934424.pth")).unwrap();
    assert_eq!(model.classes(), 1000);
    assert_eq!(model.parameters(), 4_652_008);
    let labels = labels(&folder);
    let reference = common::reference(MODEL);
    let expected = expected_classes(&reference);
    let side = model.input_size();

    // PIL's crop: already 224×224, so only the normalization applies.
    let crop = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/reference")
            .join(reference["input"].as_str().unwrap()),
    )
    .unwrap();
    let normalize_only = ImagePreprocessing {
        resize_shorter: side as u32,
        ..model.preprocessing()
    };
    let input = normalize_only.prepare(&crop).unwrap();
    let probabilities = softmax(&model.forward(&input, 1));
    print_top("PIL's crop", &probabilities, &labels, &expected);
    let ours = ranking(&probabilities);
    for (rank, (index, label, p)) in expected.iter().take(3).enumerate() {
        assert_eq!(ours[rank], *index, "rank {}", rank + 1);
        assert_eq!(&labels[*index], label);
        let got = f64::from(probabilities[*index]);
        assert!((got - p).abs() <= 0.005, "class {index}: {got} vs {p}");
    }
    assert_eq!((ours[0], labels[652].as_str()), (652, "military uniform"));

    // In a batch, between a mirrored copy and a darker one, the crop gets the same scores.
    let darker: Vec<f32> = input.iter().map(|v| v * 0.5).collect();
    let batch = [mirrored(&input, side), input.clone(), darker.clone()].concat();
    let logits = model.forward(&batch, 3);
    let classes = model.classes();
    let in_batch = softmax(&logits[classes..2 * classes]);
    let difference = (in_batch.iter().zip(&probabilities))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(difference <= 1e-5, "batched vs alone: {difference}");
    // In a batch large enough for each of two threads to take whole images (nine, their
    // layers unsplit), the crop among them.
    let others = [mirrored(&input, side), darker];
    let large: Vec<f32> = (0..9)
        .flat_map(|i| if i == 5 { &input } else { &others[i % 2] }.iter().copied())
        .collect();
    let two_threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let logits = two_threads.install(|| model.forward(&large, 9));
    let in_large_batch = softmax(&logits[5 * classes..6 * classes]);
    let difference = (in_large_batch.iter().zip(&probabilities))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        difference <= 1e-5,
        "in a batch of nine vs alone: {difference}"
    );

    // From the JPEG: the same classes in the same order, each within 0.005 of the reference.
    let photo = std::fs::read(images.join(reference["image"].as_str().unwrap())).unwrap();
    let input = model.preprocessing().prepare(&photo).unwrap();
    let probabilities = softmax(&model.forward(&input, 1));
    print_top("from the JPEG", &probabilities, &labels, &expected);
    let ours = ranking(&probabilities);
    for (rank, (index, _, p)) in expected.iter().take(3).enumerate() {
        assert_eq!(ours[rank], *index, "rank {}", rank + 1);
        let got = f64::from(probabilities[*index]);
        assert!((got - p).abs() <= 0.005, "class {index}: {got} vs {p}");
    }
}
