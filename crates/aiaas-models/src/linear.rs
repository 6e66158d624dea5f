//! A decoder's weight matrix: Q4_1 and Q5_0 through this crate's vectorized product
//! (`int8_matmul`), every other GGUF type through candle's.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::int8_matmul::{QuantizedMatrix, WeightBlock, Q4_1, Q5_0};
use crate::Result;

pub enum Linear {
    Q4_1(QuantizedMatrix<Q4_1>),
    Q5_0(QuantizedMatrix<Q5_0>),
    Candle(QMatMul),
}

impl Linear {
    /// Takes a `(out, in)` weight tensor.
    pub fn new(weights: QTensor) -> Result<Self> {
        Self::shared(Arc::new(weights))
    }

    /// Takes a `(out, in)` weight tensor that is also used elsewhere (tied embeddings).
    pub fn shared(weights: Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = weights.shape().dims2()?;
        Ok(match weights.dtype() {
            GgmlDType::Q4_1 => {
                Self::Q4_1(QuantizedMatrix::from_bytes(&weights.data()?, rows, cols)?)
            }
            GgmlDType::Q5_0 => {
                Self::Q5_0(QuantizedMatrix::from_bytes(&weights.data()?, rows, cols)?)
            }
            _ => Self::Candle(QMatMul::from_arc(weights)?),
        })
    }

    /// `x` (`(tokens, in)`) times the transposed weights: `(tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, rows) = match self {
            Self::Candle(matmul) => return Ok(matmul.forward(x)?),
            Self::Q4_1(matrix) => (Self::product(matrix, x)?, matrix.rows),
            Self::Q5_0(matrix) => (Self::product(matrix, x)?, matrix.rows),
        };
        Ok(Tensor::from_vec(out, (x.dim(0)?, rows), x.device())?)
    }

    fn product<B: WeightBlock>(matrix: &QuantizedMatrix<B>, x: &Tensor) -> Result<Vec<f32>> {
        let (tokens, _) = x.dims2()?;
        let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(matrix.matmul(&values, tokens))
    }
}
