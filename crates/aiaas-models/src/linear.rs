//! A decoder's weight matrix: the GGUF types in use (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K)
//! through this crate's vectorized products (`int8_matmul`), any other through candle's.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::int8_matmul::{GroupedFormat, GroupedMatrix, Product, Q4K, Q4_0, Q4_1, Q5_0, Q6K, Q8_0};
use crate::{ModelError, Result};

pub enum Linear {
    Own(Box<dyn Product>),
    Candle(QMatMul),
}

impl Linear {
    /// Takes a `(out, in)` weight tensor.
    pub fn new(weights: QTensor) -> Result<Self> {
        Self::shared(Arc::new(weights))
    }

    /// Takes a `(out, in)` weight tensor that is also used elsewhere (tied embeddings).
    pub fn shared(weights: Arc<QTensor>) -> Result<Self> {
        fn own<F: GroupedFormat>(weights: &QTensor) -> Result<Linear> {
            let (rows, cols) = weights.shape().dims2()?;
            let matrix = GroupedMatrix::<F>::from_bytes(&weights.data()?, rows, cols)?;
            Ok(Linear::Own(Box::new(matrix)))
        }
        match weights.dtype() {
            GgmlDType::Q4_0 => own::<Q4_0>(&weights),
            GgmlDType::Q4_1 => own::<Q4_1>(&weights),
            GgmlDType::Q5_0 => own::<Q5_0>(&weights),
            GgmlDType::Q8_0 => own::<Q8_0>(&weights),
            GgmlDType::Q4K => own::<Q4K>(&weights),
            GgmlDType::Q6K => own::<Q6K>(&weights),
            _ => Ok(Self::Candle(QMatMul::from_arc(weights)?)),
        }
    }

    /// `x` (`tokens` rows of `in` values) times the transposed weights: `tokens` rows of `out`.
    pub fn forward(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        match self {
            Self::Own(product) => Ok(product.matmul(x, tokens)),
            Self::Candle(matmul) => {
                let x = Tensor::from_slice(x, (tokens, x.len() / tokens.max(1)), &Device::Cpu)?;
                Ok(matmul
                    .forward(&x)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?)
            }
        }
    }

    /// Rows of the weights themselves, as f32, one after the other: the lookup of a tied
    /// embedding table, which is then kept in memory once. Only for this crate's formats.
    pub fn gather(&self, rows: &[u32]) -> Result<Vec<f32>> {
        let Self::Own(product) = self else {
            return Err(ModelError::Format(
                "rows can only be read from this crate's formats".into(),
            ));
        };
        Ok(product.gather(rows))
    }
}
