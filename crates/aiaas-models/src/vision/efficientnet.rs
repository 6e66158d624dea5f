//! EfficientNet-Lite0 (Tan & Le, "EfficientNet", 2019; the Lite variants drop
//! squeeze-and-excitation and swish for ReLU6 so that they quantize and run well on mobile
//! hardware), from lukemelas' EfficientNet-PyTorch checkpoints: `_conv_stem`, `_bn0`,
//! `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`,
//! `_bn1`, `_fc`. Reference: <https://github.com/RangiLyu/EfficientNet-Lite> and
//! `efficientnet_pytorch/model.py`.
//!
//! The network: a 3×3 stride-2 stem, 16 inverted-residual blocks (1×1 expansion, depthwise
//! convolution, 1×1 linear projection, the input added back when the shape allows), a 1×1 head
//! to 1280 channels, global average pooling and a linear classifier. Batch norms (ε = 10⁻³) are
//! folded into the convolutions at load; padding is TensorFlow's "same".

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use super::conv::{sized, Depthwise, Pointwise, Split, Stem, Then};
use super::ImagePreprocessing;
use crate::fast_math::{dot, vectorized};
use crate::team::Team;
use crate::torch_legacy::{self, StateDict};
use crate::{ModelError, Result};

/// The image side the network was trained at.
const INPUT_SIZE: usize = 224;
/// Batch norm's ε in the TensorFlow-trained checkpoints.
const BATCH_NORM_EPSILON: f64 = 1e-3;
/// EfficientNet-B0's (and Lite0's) blocks: output channels, depthwise kernel and stride. The
/// first block of each stage changes the channel count and carries the stage's stride.
const BLOCKS: [(usize, usize, usize); 16] = [
    (16, 3, 1),
    (24, 3, 2),
    (24, 3, 1),
    (40, 5, 2),
    (40, 5, 1),
    (80, 3, 2),
    (80, 3, 1),
    (80, 3, 1),
    (112, 5, 1),
    (112, 5, 1),
    (112, 5, 1),
    (192, 5, 2),
    (192, 5, 1),
    (192, 5, 1),
    (192, 5, 1),
    (320, 3, 1),
];
const STEM_CHANNELS: usize = 32;

/// One inverted-residual block.
struct Block {
    /// Absent when the expansion ratio is 1 (the first block).
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    /// Whether the input is added to the output (same shape in and out).
    residual: bool,
}

impl Block {
    /// The block on a `size`×`size` channels-last image, into `out`; returns the output's side.
    fn forward(
        &self,
        x: &[f32],
        size: usize,
        scratch: &mut Scratch,
        out: &mut Vec<f32>,
        split: Split,
    ) -> usize {
        let out_size = self.depthwise.output_size(size);
        let then = if self.residual {
            Then::Add(x)
        } else {
            Then::Nothing
        };
        let out = sized(out, out_size * out_size * self.project.outputs());
        let project = (&self.project, out, then);
        match &self.expand {
            Some(expand) if out_size >= IN_STRIPS_MIN_ROWS => {
                let inputs = expand.inputs();
                let expand_rows = |rows: Range<usize>, window: &mut [f32]| {
                    let x = &x[rows.start * size * inputs..rows.end * size * inputs];
                    expand.forward(x, window, Then::Relu6, Split::None);
                };
                self.depthwise
                    .forward_from_rows(size, expand_rows, project, split);
            }
            expand => {
                let input = match expand {
                    Some(expand) => {
                        let expanded = sized(&mut scratch.expanded, size * size * expand.outputs());
                        expand.forward(x, expanded, Then::Relu6, split);
                        &*expanded
                    }
                    None => x,
                };
                let hidden_len = out_size * out_size * self.project.inputs();
                let hidden = sized(&mut scratch.hidden, hidden_len);
                self.depthwise
                    .forward_projected(input, size, hidden, project, split);
            }
        }
        out_size
    }
}

/// Output rows a block needs for its input to be made strip by strip (by its expansion, or for
/// the first block by the stem), each thread's share in a window of its own
/// (`Depthwise::forward_from_rows`): at 14×14 a share of 7 rows on two threads would expand 2
/// or 4 rows more than its own (a 3×3 or 5×5 filter's halo), and the expanded tensor (1.3 MB)
/// stays in the cache anyway.
const IN_STRIPS_MIN_ROWS: usize = 28;

/// A block's intermediate activations, kept from block to block and image to image: fresh
/// multi-megabyte buffers cost a zero-fill (or page faults) each, about a tenth of the time.
#[derive(Default)]
struct Scratch {
    /// After the expansion.
    expanded: Vec<f32>,
    /// After the depthwise convolution.
    hidden: Vec<f32>,
}

/// An EfficientNet-Lite0 classifier.
pub struct EfficientNet {
    stem: Stem,
    blocks: Vec<Block>,
    head: Pointwise,
    /// `[classes, features]`, row-major, f32 (a small share of the work, kept exact).
    classifier: Vec<f32>,
    classifier_bias: Vec<f32>,
    parameters: u64,
    /// Buffers for the images in flight, one set each (a pool, not thread-locals: a rayon
    /// thread waiting inside one image's layer may start another image).
    scratch: Mutex<Vec<(Scratch, [Vec<f32>; 2])>>,
}

impl EfficientNet {
    /// Loads a legacy (pre-1.6) PyTorch checkpoint of EfficientNet-Lite0.
    pub fn load(path: &Path) -> Result<Self> {
        let weights = torch_legacy::read(path)?;
        Self::from_state_dict(&weights).map_err(|e| match e {
            ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn from_state_dict(weights: &StateDict) -> Result<Self> {
        if weights.get("_blocks.1._se_reduce.weight").is_some() {
            return Err(ModelError::Format(
                "an EfficientNet with squeeze-and-excitation (a B-variant); only Lite0 is supported"
                    .into(),
            ));
        }
        let stem_weights = tensor(weights, "_conv_stem.weight", &[STEM_CHANNELS, 3, 3, 3])?;
        let (stem_weights, stem_bias) = fold(weights, stem_weights, "_bn0")?;
        let stem = Stem::new(&stem_weights, stem_bias, 3, 3, 2);
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        let mut channels = STEM_CHANNELS;
        for (index, &(outputs, kernel, stride)) in BLOCKS.iter().enumerate() {
            let block = load_block(weights, index, channels, outputs, kernel, stride)?;
            blocks.push(block);
            channels = outputs;
        }
        if weights
            .get(&format!("_blocks.{}._depthwise_conv.weight", BLOCKS.len()))
            .is_some()
        {
            return Err(ModelError::Format(format!(
                "more than EfficientNet-Lite0's {} blocks",
                BLOCKS.len()
            )));
        }
        let head_weights = weights
            .get("_conv_head.weight")
            .ok_or_else(|| missing("_conv_head.weight"))?;
        let features = head_weights.shape.first().copied().unwrap_or(0);
        let head_weights = tensor(weights, "_conv_head.weight", &[features, channels, 1, 1])?;
        let (head_weights, head_bias) = fold(weights, head_weights, "_bn1")?;
        let classes = weights
            .get("_fc.weight")
            .and_then(|t| t.shape.first().copied())
            .ok_or_else(|| missing("_fc.weight"))?;
        let classifier = tensor(weights, "_fc.weight", &[classes, features])?.to_vec();
        let classifier_bias = tensor(weights, "_fc.bias", &[classes])?.to_vec();
        // Learned parameters: everything but batch norm's running statistics.
        let parameters = weights
            .iter()
            .filter(|(name, _)| {
                !(name.ends_with(".running_mean")
                    || name.ends_with(".running_var")
                    || name.ends_with(".num_batches_tracked"))
            })
            .map(|(_, t)| t.values.len() as u64)
            .sum();
        Ok(Self {
            stem,
            blocks,
            head: Pointwise::new(&head_weights, &head_bias),
            classifier,
            classifier_bias,
            parameters,
            scratch: Mutex::default(),
        })
    }

    /// The side of the square images `forward` takes.
    pub fn input_size(&self) -> usize {
        INPUT_SIZE
    }

    /// How photos are prepared for this network: ImageNet's evaluation transform at 224.
    pub fn preprocessing(&self) -> ImagePreprocessing {
        ImagePreprocessing::imagenet(INPUT_SIZE as u32)
    }

    pub fn classes(&self) -> usize {
        self.classifier_bias.len()
    }

    pub fn parameters(&self) -> u64 {
        self.parameters
    }

    /// Logits (`count × classes`) of `count` images, each `3 × input_size × input_size` CHW
    /// (as `ImagePreprocessing::prepare` makes them). Images are run side by side, each
    /// through the whole network: an image's logits do not depend on the rest of the batch.
    ///
    /// # Panics
    /// If `images` does not hold `count` images.
    pub fn forward(&self, images: &[f32], count: usize) -> Vec<f32> {
        let image_len = 3 * INPUT_SIZE * INPUT_SIZE;
        assert_eq!(
            images.len(),
            count * image_len,
            "expected {count} images of 3×{INPUT_SIZE}×{INPUT_SIZE} values"
        );
        // Whole rounds of one image a thread, each image's layers unsplit (its activations in
        // that core's cache, no step waiting for another thread); the images left over (all
        // of them, when fewer than the threads) one after the other, each step shared out
        // among a team of the threads.
        let unsplit = count - count % rayon::current_num_threads();
        let (whole_rounds, rest) = images.split_at(unsplit * image_len);
        let mut features: Vec<Vec<f32>> = whole_rounds
            .par_chunks(image_len)
            .map(|image| self.features(image, Split::None))
            .collect();
        Team::gather(|team| {
            let split = Split::Threads(team);
            features.extend(
                rest.chunks(image_len)
                    .map(|image| self.features(image, split)),
            );
            self.classify(&features, team)
        })
    }

    /// The pooled head features of one image.
    fn features(&self, image: &[f32], split: Split) -> Vec<f32> {
        let taken = self.scratch.lock().map(|mut pool| pool.pop());
        let (mut scratch, [mut x, mut out]) = taken.ok().flatten().unwrap_or_default();
        let mut size = self.stem.output_size(INPUT_SIZE);
        // The first block (without an expansion or a residual) reads the stem's rows as the
        // stem makes them, strip by strip: its 1.6 MB output is never whole in memory.
        let first = &self.blocks[0];
        let stem_in_strips = first.expand.is_none()
            && !first.residual
            && first.depthwise.output_size(size) >= IN_STRIPS_MIN_ROWS;
        let mut len = if stem_in_strips {
            let stem_rows = |rows: Range<usize>, window: &mut [f32]| {
                self.stem.rows(image, INPUT_SIZE, rows, window);
            };
            let out_size = first.depthwise.output_size(size);
            let len = out_size * out_size * first.project.outputs();
            let project = (&first.project, sized(&mut x, len), Then::Nothing);
            first
                .depthwise
                .forward_from_rows(size, stem_rows, project, split);
            size = out_size;
            len
        } else {
            let len = size * size * self.stem.outputs();
            self.stem
                .forward(image, INPUT_SIZE, sized(&mut x, len), split);
            len
        };
        for block in &self.blocks[usize::from(stem_in_strips)..] {
            size = block.forward(&x[..len], size, &mut scratch, &mut out, split);
            len = size * size * block.project.outputs();
            std::mem::swap(&mut x, &mut out);
        }
        let pixels = size * size;
        let width = self.head.outputs();
        let head = sized(&mut scratch.expanded, pixels * width);
        self.head.forward(&x[..len], head, Then::Relu6, split);
        let mut pooled = vec![0f32; width];
        for pixel in head.chunks_exact(width) {
            for (p, v) in pooled.iter_mut().zip(pixel) {
                *p += v;
            }
        }
        for p in &mut pooled {
            *p /= pixels as f32;
        }
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push((scratch, [x, out]));
        }
        pooled
    }

    /// The classifier on each image's features, classes shared out among the team in blocks
    /// (a task per class would cost more in scheduling than its one dot product).
    fn classify(&self, features: &[Vec<f32>], team: &Team) -> Vec<f32> {
        const CLASSES_PER_TASK: usize = 64;
        let (classes, images) = (self.classes(), features.len());
        let width = self.classifier.len() / classes;
        let mut by_class = vec![0f32; classes * images];
        let blocks = by_class
            .chunks_mut(images * CLASSES_PER_TASK)
            .zip(self.classifier.chunks(width * CLASSES_PER_TASK))
            .zip(self.classifier_bias.chunks(CLASSES_PER_TASK));
        team.share(blocks, |_, ((out, weights), biases)| {
            let rows = out
                .chunks_exact_mut(images)
                .zip(weights.chunks_exact(width));
            vectorized(
                #[inline(always)]
                || {
                    for ((out, weights), bias) in rows.zip(biases) {
                        for (o, f) in out.iter_mut().zip(features) {
                            *o = bias + dot(weights, f);
                        }
                    }
                },
            )
        });
        let mut logits = vec![0f32; images * classes];
        for (class, scores) in by_class.chunks_exact(images).enumerate() {
            for (image, score) in scores.iter().enumerate() {
                logits[image * classes + class] = *score;
            }
        }
        logits
    }
}

fn missing(name: &str) -> ModelError {
    ModelError::Format(format!(
        "not an EfficientNet-Lite0 checkpoint: no tensor `{name}`"
    ))
}

/// A tensor's values, its shape checked.
fn tensor<'a>(weights: &'a StateDict, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = weights.get(name).ok_or_else(|| missing(name))?;
    if t.shape != shape {
        return Err(ModelError::Format(format!(
            "`{name}` is {:?}, EfficientNet-Lite0 has {shape:?}",
            t.shape
        )));
    }
    Ok(&t.values)
}

/// A convolution's weights (`[outputs, …]`) with the batch norm `norm` that follows it folded
/// in: each output's weights scaled by γ/√(σ² + ε), and the bias β − μ·γ/√(σ² + ε).
fn fold(weights: &StateDict, conv: &[f32], norm: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let outputs = weights
        .get(&format!("{norm}.weight"))
        .map(|t| t.values.len())
        .ok_or_else(|| missing(&format!("{norm}.weight")))?;
    let stat = |name: &str| tensor(weights, &format!("{norm}.{name}"), &[outputs]);
    let (gamma, beta) = (stat("weight")?, stat("bias")?);
    let (mean, variance) = (stat("running_mean")?, stat("running_var")?);
    if !conv.len().is_multiple_of(outputs) {
        return Err(ModelError::Format(format!(
            "`{norm}` has {outputs} channels, its convolution does not"
        )));
    }
    let per_output = conv.len() / outputs;
    let mut folded = Vec::with_capacity(conv.len());
    let mut bias = Vec::with_capacity(outputs);
    for o in 0..outputs {
        let scale = f64::from(gamma[o]) / (f64::from(variance[o]) + BATCH_NORM_EPSILON).sqrt();
        folded.extend(
            conv[o * per_output..][..per_output]
                .iter()
                .map(|&w| (f64::from(w) * scale) as f32),
        );
        bias.push((f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32);
    }
    Ok((folded, bias))
}

/// Block `index`, checked against EfficientNet-Lite0's table.
fn load_block(
    weights: &StateDict,
    index: usize,
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
) -> Result<Block> {
    let name = |part: &str| format!("_blocks.{index}.{part}");
    let depthwise_name = name("_depthwise_conv.weight");
    let hidden = weights
        .get(&depthwise_name)
        .and_then(|t| t.shape.first().copied())
        .ok_or_else(|| missing(&depthwise_name))?;
    let expand = if weights.get(&name("_expand_conv.weight")).is_some() {
        let w = tensor(
            weights,
            &name("_expand_conv.weight"),
            &[hidden, inputs, 1, 1],
        )?;
        let (w, b) = fold(weights, w, &name("_bn0"))?;
        Some(Pointwise::new(&w, &b))
    } else if hidden == inputs {
        None
    } else {
        return Err(ModelError::Format(format!(
            "block {index} has no expansion but {hidden} channels for {inputs} inputs"
        )));
    };
    let w = tensor(weights, &depthwise_name, &[hidden, 1, kernel, kernel])?;
    let (w, b) = fold(weights, w, &name("_bn1"))?;
    let depthwise = Depthwise::new(&w, b, kernel, stride);
    let w = tensor(
        weights,
        &name("_project_conv.weight"),
        &[outputs, hidden, 1, 1],
    )?;
    let (w, b) = fold(weights, w, &name("_bn2"))?;
    Ok(Block {
        expand,
        depthwise,
        project: Pointwise::new(&w, &b),
        residual: stride == 1 && inputs == outputs,
    })
}
