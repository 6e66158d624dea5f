//! Hugging Face Whisper folders (`model.safetensors`, `config.json`, `generation_config.json`,
//! `tokenizer.json`): their tensors renamed and fused into the variables a CTranslate2 file
//! holds, so that one loader serves both formats. Query, key and value projections become one
//! `linear_0` (the keys' missing bias as zeros); cross-attention keys and values one
//! `linear_1`; head counts come from `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::ctranslate2::{Ct2Model, Variable};
use crate::{ModelError, Result};

/// The weights file of a Hugging Face folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The files of a Hugging Face Whisper folder, and whether each is required.
pub const FOLDER_FILES: &[(&str, bool)] = &[
    (WEIGHTS_FILE, true),
    ("config.json", true),
    ("tokenizer.json", true),
    ("generation_config.json", false),
    ("preprocessor_config.json", false),
];

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    encoder_layers: usize,
    decoder_layers: usize,
    encoder_attention_heads: usize,
    decoder_attention_heads: usize,
}

/// The folder's weights as CTranslate2 variables.
pub fn read(folder: &Path) -> Result<Ct2Model> {
    let config_path = folder.join("config.json");
    let config: HfConfig = super::read_json(&config_path)?;
    if config.model_type != "whisper" {
        return Err(ModelError::UnsupportedArchitecture(config.model_type));
    }
    let tensors = candle_core::safetensors::load(folder.join(WEIGHTS_FILE), &Device::Cpu)?;
    let source = Source(tensors);
    let mut variables = HashMap::new();
    let mut put = |name: String, variable: Variable| {
        variables.insert(name, variable);
    };
    for (side, layers, heads) in [
        (
            "encoder",
            config.encoder_layers,
            config.encoder_attention_heads,
        ),
        (
            "decoder",
            config.decoder_layers,
            config.decoder_attention_heads,
        ),
    ] {
        put(
            format!("{side}/num_heads"),
            Variable {
                dims: Vec::new(),
                values: vec![heads as f32],
            },
        );
        put(
            format!("{side}/position_encodings/encodings"),
            source.get(&format!("{side}.embed_positions.weight"))?,
        );
        source.norm(
            &mut put,
            &format!("{side}.layer_norm"),
            &format!("{side}/layer_norm"),
        )?;
        for l in 0..layers {
            let (hf, ct2) = (format!("{side}.layers.{l}"), format!("{side}/layer_{l}"));
            let attention = format!("{hf}.self_attn");
            let qkv = ["q_proj", "k_proj", "v_proj"];
            put(
                format!("{ct2}/self_attention/linear_0/weight"),
                source.fused(&attention, &qkv)?,
            );
            put(
                format!("{ct2}/self_attention/linear_0/bias"),
                source.fused_bias(&attention, &qkv)?,
            );
            source.linear(
                &mut put,
                &format!("{attention}.out_proj"),
                &format!("{ct2}/self_attention/linear_1"),
            )?;
            source.norm(
                &mut put,
                &format!("{hf}.self_attn_layer_norm"),
                &format!("{ct2}/self_attention/layer_norm"),
            )?;
            source.linear(
                &mut put,
                &format!("{hf}.fc1"),
                &format!("{ct2}/ffn/linear_0"),
            )?;
            source.linear(
                &mut put,
                &format!("{hf}.fc2"),
                &format!("{ct2}/ffn/linear_1"),
            )?;
            source.norm(
                &mut put,
                &format!("{hf}.final_layer_norm"),
                &format!("{ct2}/ffn/layer_norm"),
            )?;
            if side == "decoder" {
                let cross = format!("{hf}.encoder_attn");
                source.linear(
                    &mut put,
                    &format!("{cross}.q_proj"),
                    &format!("{ct2}/attention/linear_0"),
                )?;
                let kv = ["k_proj", "v_proj"];
                put(
                    format!("{ct2}/attention/linear_1/weight"),
                    source.fused(&cross, &kv)?,
                );
                put(
                    format!("{ct2}/attention/linear_1/bias"),
                    source.fused_bias(&cross, &kv)?,
                );
                source.linear(
                    &mut put,
                    &format!("{cross}.out_proj"),
                    &format!("{ct2}/attention/linear_2"),
                )?;
                source.norm(
                    &mut put,
                    &format!("{hf}.encoder_attn_layer_norm"),
                    &format!("{ct2}/attention/layer_norm"),
                )?;
            }
        }
    }
    put(
        "encoder/conv1/weight".into(),
        source.get("encoder.conv1.weight")?,
    );
    put(
        "encoder/conv1/bias".into(),
        source.get("encoder.conv1.bias")?,
    );
    put(
        "encoder/conv2/weight".into(),
        source.get("encoder.conv2.weight")?,
    );
    put(
        "encoder/conv2/bias".into(),
        source.get("encoder.conv2.bias")?,
    );
    put(
        "decoder/embeddings/weight".into(),
        source.get("decoder.embed_tokens.weight")?,
    );
    Ok(Ct2Model::from_variables("WhisperSpec", variables))
}

/// The safetensors tensors, found with or without the `model.` prefix of
/// `WhisperForConditionalGeneration`.
struct Source(HashMap<String, Tensor>);

impl Source {
    fn get(&self, name: &str) -> Result<Variable> {
        let tensor = (self.0.get(&format!("model.{name}")))
            .or_else(|| self.0.get(name))
            .ok_or_else(|| ModelError::Format(format!("missing tensor `{name}`")))?;
        Ok(Variable {
            dims: tensor.dims().to_vec(),
            values: tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(&format!("model.{name}")) || self.0.contains_key(name)
    }

    fn linear(&self, put: &mut impl FnMut(String, Variable), from: &str, to: &str) -> Result<()> {
        put(format!("{to}/weight"), self.get(&format!("{from}.weight"))?);
        put(format!("{to}/bias"), self.get(&format!("{from}.bias"))?);
        Ok(())
    }

    fn norm(&self, put: &mut impl FnMut(String, Variable), from: &str, to: &str) -> Result<()> {
        put(format!("{to}/gamma"), self.get(&format!("{from}.weight"))?);
        put(format!("{to}/beta"), self.get(&format!("{from}.bias"))?);
        Ok(())
    }

    /// The weights of `parts` of `prefix` stacked along their outputs.
    fn fused(&self, prefix: &str, parts: &[&str]) -> Result<Variable> {
        let mut dims = vec![0, 0];
        let mut values = Vec::new();
        for part in parts {
            let weight = self.get(&format!("{prefix}.{part}.weight"))?;
            dims = vec![dims[0] + weight.dims[0], weight.dims[1]];
            values.extend(weight.values);
        }
        Ok(Variable { dims, values })
    }

    /// The biases of `parts` of `prefix`, one after the other; a part without one (the keys)
    /// adds zeros.
    fn fused_bias(&self, prefix: &str, parts: &[&str]) -> Result<Variable> {
        let mut values = Vec::new();
        for part in parts {
            let bias = format!("{prefix}.{part}.bias");
            if self.has(&bias) {
                values.extend(self.get(&bias)?.values);
            } else {
                let outputs = self.get(&format!("{prefix}.{part}.weight"))?.dims[0];
                values.extend(std::iter::repeat_n(0.0, outputs));
            }
        }
        Ok(Variable {
            dims: vec![values.len()],
            values,
        })
    }
}
